//! Client state shared between replicas through Redis, off the request
//! path. A request only notes what it adds (a few counters in a bounded
//! map) and reads what the last sync brought; a background task flushes
//! the notes every `sync_interval` in one pipelined batch, reads the
//! global counts back and keeps, per client, what the other replicas
//! added. What other replicas admitted of a client's `limit` quotas is
//! charged to the quotas here. Redis down, slow or failing: requests go
//! on with local state (fail-open), the task logs once per change and
//! retries, and the notes stay bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, IntCounter, IntGauge};

use super::redis_link::{Link, Servers};
use super::{
    AUTH_FAILURE_WINDOW, BoundedMap, ClientKey, ClientRecord, Count, RATE_WINDOWS, STATUS_WINDOW,
};
use crate::limits::Limits;
use crate::verdict::Class;

/// Classes, for per-class tables.
const CLASSES: usize = Class::ALL.len();

/// Clients with unflushed notes, at most; past it a new client's notes
/// are dropped (and counted) until the next flush.
pub const MAX_PENDING: usize = 65_536;

/// Locks the notes are spread over.
const PENDING_SHARDS: usize = 16;

/// One shard's notes.
type Notes = HashMap<ClientKey, Delta, foldhash::fast::RandomState>;

/// What one replica added to a client since the last flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    requests: u32,
    answered: u32,
    status_4xx: u32,
    status_404: u32,
    status_auth: u32,
    auth_failures: u32,
    /// Requests admitted within the client's quota, by class.
    admitted: [u32; CLASSES],
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
        for (a, b) in self.admitted.iter_mut().zip(other.admitted) {
            *a = a.saturating_add(b);
        }
        self.verdict |= other.verdict;
    }
}

/// What the other replicas added to one client, as of the last sync: a
/// record of counts only (no paths, no rhythm), on its own clock.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Remote {
    counts: ClientRecord,
    /// What this replica flushed for the client, filed as Redis files it:
    /// by the time of the sync. Subtracted from the global counts, it
    /// leaves exactly the others' share.
    flushed: ClientRecord,
    /// Until when (Unix seconds) another replica's `malicious_bot`
    /// verdict stands; 0 for none.
    verdict_until: u32,
    /// What all replicas admitted of the client's quotas, as last read.
    admitted: Admitted,
}

/// What all replicas admitted of a client's quotas, per class, in the
/// minute window of the last read; each new read gives what the other
/// replicas admitted in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Admitted {
    /// The count last read, per class.
    seen: [u32; CLASSES],
    /// When the window of `seen` started (Unix seconds).
    window: u32,
    /// The classes read at least once.
    known: u8,
    /// When the last read was (Unix milliseconds).
    read_at: u64,
    /// This replica's admissions sent since the last read but never
    /// answered (taken as applied).
    sent: [u32; CLASSES],
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

/// Requests the other replicas admitted of a quota, over how long.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Elsewhere {
    requests: u32,
    over: Duration,
}

impl Admitted {
    /// Admissions sent without an answer: the next read has them too.
    fn sent(&mut self, mine: &[u32; CLASSES]) {
        for (a, b) in self.sent.iter_mut().zip(mine) {
            *a = a.saturating_add(*b);
        }
    }

    /// Take a read of the global counts (for each of `classes`, the
    /// current minute's and the previous one's), of which `mine` were
    /// admitted here since the last read: gives, per class, what the
    /// others admitted since the last read and over how long. A class
    /// read for the first time (or after a pause of minutes) gives the
    /// others' two minutes, over the two minutes.
    fn update(
        &mut self,
        classes: &[Class],
        global: &[Option<i64>],
        mine: &[u32; CLASSES],
        now_ms: u64,
    ) -> [Elsewhere; CLASSES] {
        let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let window = now - now % STATUS_WINDOW;
        let count = |v: Option<i64>| u32::try_from(v.unwrap_or(0).max(0)).unwrap_or(u32::MAX);
        let since_read = Duration::from_millis(now_ms.saturating_sub(self.read_at));
        let mut elsewhere = [Elsewhere::default(); CLASSES];
        for (&class, pair) in classes.iter().zip(global.chunks_exact(2)) {
            let i = class.index();
            let (current, previous) = (count(pair[0]), count(pair[1]));
            let last = std::mem::replace(&mut self.seen[i], current);
            let known = self.known & (1 << i) != 0;
            self.known |= 1 << i;
            // A count below the last one read means the key expired and
            // began again: all of it is new.
            let after = |total: u32| total.checked_sub(last).unwrap_or(total);
            let (all, over) = match self.window {
                w if known && w == window => (after(current), since_read),
                w if known && w.checked_add(STATUS_WINDOW) == Some(window) => {
                    (after(previous).saturating_add(current), since_read)
                }
                _ => (
                    previous.saturating_add(current),
                    Duration::from_millis(
                        now_ms
                            .saturating_sub(u64::from(window.saturating_sub(STATUS_WINDOW)) * 1000),
                    ),
                ),
            };
            elsewhere[i] = Elsewhere {
                requests: all.saturating_sub(mine[i]).saturating_sub(self.sent[i]),
                over,
            };
        }
        self.sent = [0; CLASSES];
        self.window = window;
        self.read_at = now_ms;
        elsewhere
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
    /// The server or cluster.
    pub servers: Servers,
    /// The CA to trust for `rediss://` (PEM), instead of the system's.
    pub tls_ca: Option<Vec<u8>>,
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
    /// Notes by client, in shards so that workers rarely meet on a lock.
    pending: Vec<Mutex<Notes>>,
    shard_hasher: foldhash::fast::RandomState,
    remote: BoundedMap<ClientKey, Remote>,
    metrics: std::sync::OnceLock<SyncMetrics>,
    /// [`UNKNOWN`] until the first sync, then 1 (up) or 0 (down).
    up: AtomicU8,
    /// This replica, as its verdicts name it (random per process).
    replica: u32,
    /// Told to flush once more and stop (on shutdown).
    finish: tokio::sync::Notify,
    /// Told when the last flush is done.
    finished: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
}

const UNKNOWN: u8 = 2;

impl Shared {
    /// Shared state for up to `capacity` clients' remote counts.
    pub fn new(config: SharedConfig, capacity: usize) -> Self {
        Shared {
            config,
            pending: (0..PENDING_SHARDS)
                .map(|_| Mutex::new(Notes::default()))
                .collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            remote: BoundedMap::new(capacity),
            metrics: std::sync::OnceLock::new(),
            up: AtomicU8::new(UNKNOWN),
            replica: replica_id(),
            finish: tokio::sync::Notify::new(),
            finished: Mutex::new(None),
        }
    }

    /// Report to these metrics from now on (the first set given wins).
    pub fn set_metrics(&self, metrics: SyncMetrics) {
        metrics
            .up
            .set(i64::from(self.up.load(Ordering::Relaxed) == 1));
        let _ = self.metrics.set(metrics);
    }

    fn metrics(&self) -> Option<&SyncMetrics> {
        self.metrics.get()
    }

    /// Note what a request adds to a client.
    pub fn note(&self, key: ClientKey, delta: Delta) {
        let mut pending = lock(self.shard(key));
        if let Some(d) = pending.get_mut(&key) {
            d.merge(delta);
        } else if pending.len() < MAX_PENDING / PENDING_SHARDS {
            pending.insert(key, delta);
        } else {
            drop(pending);
            if let Some(m) = self.metrics() {
                m.dropped.inc();
            }
        }
    }

    /// The shard of a client's notes, by a hash keyed per process, so
    /// that nobody can choose addresses that all fill one shard.
    fn shard(&self, key: ClientKey) -> &Mutex<Notes> {
        use std::hash::BuildHasher;
        let hash = self.shard_hasher.hash_one(key);
        &self.pending[(hash >> 60) as usize % PENDING_SHARDS]
    }

    /// Every note so far, leaving none.
    fn take_notes(&self) -> Vec<(ClientKey, Delta)> {
        let mut all = Vec::new();
        for shard in &self.pending {
            let notes = std::mem::take(&mut *lock(shard));
            all.extend(notes);
        }
        all
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

    /// A request admitted within its client's quota for `class`.
    pub fn note_admitted(&self, key: ClientKey, class: Class) {
        let mut admitted = [0; CLASSES];
        admitted[class.index()] = 1;
        self.note(
            key,
            Delta {
                admitted,
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

    /// Flush what is noted now and stop syncing; waits at most `timeout`
    /// for Redis (blocking: for the end of `serve`, after the drain).
    /// Returns whether the last flush was done.
    pub fn finish(&self, timeout: Duration) -> bool {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        *lock(&self.finished) = Some(done);
        self.finish.notify_one();
        wait.recv_timeout(timeout).is_ok()
    }

    /// Read what the other replicas added to a client, as of the last
    /// sync, if anything.
    pub fn with_remote<R>(&self, key: ClientKey, read: impl FnOnce(&Remote) -> R) -> Option<R> {
        self.remote.peek(&key, read)
    }

    /// Flush notes and read counts back every `sync_interval`, until the
    /// process ends or [`Shared::finish`] is called; what other replicas
    /// admitted is charged to the quotas `limits` gives at each sync (the
    /// live configuration's).
    pub async fn run(self: std::sync::Arc<Self>, limits: impl Fn() -> Limits) {
        let timeout = self.config.sync_interval.max(Duration::from_millis(100)) * 5;
        let mut link = match Link::new(&self.config.servers, self.config.tls_ca.as_deref(), timeout)
        {
            Ok(link) => link,
            Err(e) => {
                // The URLs and CA were checked at load; this is not expected.
                tracing::error!(error = %e, "state backend: cannot use the Redis settings; sharing off");
                return;
            }
        };
        let mut idle_ticks = 0u32;
        // While Redis is unreachable, tries to connect are spaced out,
        // doubling from one sync interval to RETRY_WAIT_MAX.
        let mut retry_wait = self.config.sync_interval;
        let mut retry_at = std::time::Instant::now();
        let mut tick = tokio::time::interval(self.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                () = self.finish.notified() => true,
            };
            let batch = self.take_notes();
            if last {
                // One try, then stop whatever came of it.
                let _ = self.sync(&mut link, &batch, &limits()).await;
                if let Some(done) = lock(&self.finished).take() {
                    let _ = done.send(());
                }
                return;
            }
            if batch.is_empty() && link.is_connected() {
                // Idle: a PING now and then keeps `backend_up` honest.
                idle_ticks += 1;
                if idle_ticks >= IDLE_PING_TICKS {
                    idle_ticks = 0;
                    if let Err(e) = link.ping().await {
                        link.disconnect();
                        self.failed(&e);
                    }
                }
                continue;
            }
            idle_ticks = 0;
            let started = std::time::Instant::now();
            if !link.is_connected() {
                // Nothing is sent: the notes wait for the next try, as
                // bounded as ever.
                if started >= retry_at {
                    match link.connect().await {
                        Ok(()) => retry_wait = self.config.sync_interval,
                        Err(e) => {
                            self.failed(&e);
                            retry_at = started + retry_wait;
                            retry_wait = (retry_wait * 2).min(RETRY_WAIT_MAX);
                        }
                    }
                }
                if !link.is_connected() {
                    for (key, delta) in batch {
                        self.note(key, delta);
                    }
                    continue;
                }
            }
            let result = self.sync(&mut link, &batch, &limits()).await;
            if let Some(m) = self.metrics() {
                m.duration.observe(started.elapsed().as_secs_f64());
            }
            match result {
                Ok(()) => self.set_up(true, None),
                Err(e) => {
                    // Sent, perhaps applied: sending the notes again could
                    // count them twice, so they are given up (and counted).
                    if e.link {
                        link.disconnect();
                    }
                    self.failed(&e.error);
                    if let Some(m) = self.metrics() {
                        m.dropped.inc_by(e.unanswered as u64);
                    }
                }
            }
        }
    }

    fn failed(&self, error: &redis::RedisError) {
        if let Some(m) = self.metrics() {
            m.errors.inc();
        }
        self.set_up(false, Some(error));
    }

    fn set_up(&self, up: bool, error: Option<&redis::RedisError>) {
        if let Some(m) = self.metrics() {
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

    /// One flush, all clients in one pipeline of plain commands: per
    /// client, one hash takes the increments of each window's field, loses
    /// the fields of windows past, and gives back those still counting
    /// with what was admitted of the quotas `limits` has.
    async fn sync(
        &self,
        link: &mut Link,
        batch: &[(ClientKey, Delta)],
        limits: &Limits,
    ) -> Result<(), SyncError> {
        if batch.is_empty() {
            return Ok(());
        }
        let now_ms = unix_millis(SystemTime::now());
        let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let quotas: Vec<Class> = Class::ALL.into_iter().filter(|&c| limits.has(c)).collect();
        let fields = Fields::at(now, &quotas);
        let verdict_until = now.saturating_add(
            u32::try_from(self.config.verdict_ttl.as_secs().max(1)).unwrap_or(u32::MAX),
        );
        let names: Vec<String> = batch.iter().map(|(key, _)| self.client_key(*key)).collect();
        let plans: Vec<Plan> = batch
            .iter()
            .map(|(key, _)| Plan::new(self.remote.peek(key, |r| r.flushed.clock), now))
            .collect();
        let answer = link
            .exchange(&names, |pipe, i| {
                let (name, delta) = (&names[i], &batch[i].1);
                for (field, by) in fields.increments(delta) {
                    pipe.hincr(name, field, by).ignore();
                }
                if delta.verdict {
                    pipe.hset_multiple(name, &[("v", verdict_until), ("vr", self.replica)])
                        .ignore();
                }
                let plan = plans[i];
                pipe.expire(name, KEY_TTL).ignore();
                let mut stale = fields.stale_since(plan.last).peekable();
                if stale.peek().is_some() {
                    pipe.cmd("HDEL")
                        .arg(name)
                        .arg(stale.collect::<Vec<_>>())
                        .ignore();
                }
                pipe.cmd("HMGET").arg(name).arg(&fields.read);
                if plan.sweep {
                    pipe.cmd("HKEYS").arg(name);
                }
                1 + usize::from(plan.sweep)
            })
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                // Sent, perhaps applied: taken as applied, so that the next
                // read does not count them again as another replica's.
                for (key, delta) in batch {
                    self.unanswered(*key, delta, now);
                }
                return Err(SyncError {
                    error,
                    unanswered: batch.len(),
                    link: true,
                });
            }
        };
        let mut unanswered = 0;
        let mut replies = answer.replies.into_iter();
        // Per client swept: where in the batch, and its stale field names.
        let mut sweep: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        for (i, (key, delta)) in batch.iter().enumerate() {
            let reply = replies.next();
            if plans[i].sweep
                && let Some(redis::Value::Array(names)) = replies.next()
            {
                let stale: Vec<Vec<u8>> = names
                    .into_iter()
                    .filter_map(|n| match n {
                        redis::Value::BulkString(b) if is_stale(&b, now) => Some(b),
                        _ => None,
                    })
                    .collect();
                if !stale.is_empty() {
                    sweep.push((i, stale));
                }
            }
            let reply = reply.and_then(numbers);
            let Some((counts, admitted)) = reply
                .as_deref()
                .and_then(|r| r.split_first_chunk::<READ_LEN>())
                .filter(|(_, admitted)| admitted.len() == 2 * quotas.len())
            else {
                // No answer (a cluster slot that failed) or an odd one (an
                // odd key): what was sent is taken as applied.
                self.unanswered(*key, delta, now);
                unanswered += 1;
                continue;
            };
            let elsewhere = self.remote.with(*key, Remote::default, |remote| {
                let mut flushed = remote.flushed;
                flushed.advance(now);
                add_delta(&mut flushed, delta);
                let read = std::mem::take(&mut remote.admitted);
                *remote = remote_counts(counts, flushed, now, self.replica);
                remote.admitted = read;
                remote
                    .admitted
                    .update(&quotas, admitted, &delta.admitted, now_ms)
            });
            for &class in &quotas {
                let Elsewhere { requests, over } = elsewhere[class.index()];
                limits.charge(class, *key, requests, over);
            }
        }
        if !sweep.is_empty() {
            let swept: Vec<String> = sweep.iter().map(|(i, _)| names[*i].clone()).collect();
            // Everything else is done: a sweep that fails waits for the next.
            let deleted = link
                .exchange(&swept, |pipe, j| {
                    pipe.hdel(&swept[j], &sweep[j].1).ignore();
                    0
                })
                .await;
            if let Err(e) = deleted {
                tracing::debug!(error = %e, "state backend: sweep failed");
            }
        }
        match answer.failed {
            None => Ok(()),
            Some(error) => Err(SyncError {
                error,
                unanswered,
                link: false,
            }),
        }
    }

    /// Take a client's notes, sent but not answered, as applied: they
    /// join what this replica flushed, and its admissions are not counted
    /// as another replica's at the next read. (Were they not applied, the
    /// others' share reads low until the windows turn: never high.)
    fn unanswered(&self, key: ClientKey, delta: &Delta, now: u32) {
        self.remote.with(key, Remote::default, |remote| {
            remote.flushed.advance(now);
            add_delta(&mut remote.flushed, delta);
            remote.admitted.sent(&delta.admitted);
        });
    }

    /// `prefix` + `c:` + the client in braces (so a Redis Cluster would
    /// keep a client's key in one slot).
    fn client_key(&self, key: ClientKey) -> String {
        format!("{}c:{{{:032x}}}", self.config.key_prefix, key.bits())
    }
}

/// How a sync fell short.
struct SyncError {
    error: redis::RedisError,
    /// Clients whose notes were sent and never answered.
    unanswered: usize,
    /// Whether the link failed (else a cluster slot or a client did).
    link: bool,
}

/// What one sync does for a client besides flushing its notes and
/// reading the global counts back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// When it last synced here (Unix seconds); none for a client new here.
    last: Option<u32>,
    /// Sweep its fields: at its first sync here in each minute.
    sweep: bool,
}

impl Plan {
    fn new(last: Option<u32>, now: u32) -> Plan {
        Plan {
            last,
            sweep: last.is_none_or(|last| last / SWEEP_EVERY != now / SWEEP_EVERY),
        }
    }
}

/// The longest wait between tries to reach Redis while it is unreachable.
const RETRY_WAIT_MAX: Duration = Duration::from_secs(5);

/// Idle sync ticks between PINGs that check Redis is still there.
const IDLE_PING_TICKS: u32 = 10;

/// How often (seconds) a replica reads a client's field names to delete
/// those of windows past.
const SWEEP_EVERY: u32 = 60;

/// Whether a field counts for a window that ended before the previous
/// one (`r10:999980` at 1,000,005 s); the verdict and unknown names are
/// kept.
fn is_stale(field: &[u8], now: u32) -> bool {
    let Some((what, start)) = std::str::from_utf8(field)
        .ok()
        .and_then(|f| f.split_once(':'))
    else {
        return false;
    };
    let window = match what {
        "a" | "x" | "n" | "u" => STATUS_WINDOW,
        q if Fields::ADMITTED.contains(&q) => STATUS_WINDOW,
        "f" => AUTH_FAILURE_WINDOW,
        _ => match what.strip_prefix('r').and_then(|w| w.parse::<u32>().ok()) {
            Some(w) if WINDOWS.contains(&w) => w,
            _ => return false,
        },
    };
    let Ok(start) = start.parse::<u32>() else {
        return false;
    };
    let previous = (now - now % window).saturating_sub(window);
    start < previous
}

/// A client's hash lives this long past its last write (seconds): the
/// longest window twice, and a second.
const KEY_TTL: i64 = 2 * AUTH_FAILURE_WINDOW as i64 + 1;

/// The windows kept in Redis: the rate windows; statuses share the
/// 60-second one, failed credentials the 300-second one.
const WINDOWS: [u32; 4] = RATE_WINDOWS;
const WINDOW_COUNT: usize = WINDOWS.len();

/// How many values a client's read gives back: requests in the current
/// and previous window of each length, the four status counts and failed
/// credentials in their current and previous windows, and the verdict
/// with the replica that gave it.
const READ_LEN: usize = 2 * WINDOW_COUNT + 8 + 2 + 2;

/// The hash fields of one sync second: a window's field is named by what
/// it counts and when the window started (`r60:1000020`, `x:1000020`);
/// what was admitted of a class's quota is counted by the minute, named
/// by the class's place (`q0:1000020` for `public_visitor`).
struct Fields {
    /// Requests' field of each window now.
    requests: [String; WINDOW_COUNT],
    /// Statuses' (answered, 4xx, 404, 401/403) fields now.
    statuses: [String; 4],
    /// Failed credentials' field now.
    auth: String,
    /// What a read asks for: [`READ_LEN`] fields in order, then for each
    /// class with a quota what was admitted this minute and the last.
    read: Vec<String>,
    /// Admitted requests' field of each class now.
    admitted: [String; CLASSES],
    /// Fields of windows no longer counting (two and more back), deleted
    /// as each client syncs; a client idle meanwhile leaves a few more,
    /// gone at the next sweep or with its key.
    stale: Vec<Stale>,
}

/// A field of a window past.
struct Stale {
    /// The window's length and start (seconds).
    window: u32,
    start: u32,
    name: String,
}

impl Fields {
    const STATUS: [&'static str; 4] = ["a", "x", "n", "u"];
    const ADMITTED: [&'static str; CLASSES] = ["q0", "q1", "q2", "q3", "q4"];

    fn at(now: u32, quotas: &[Class]) -> Fields {
        let start = |w: u32, back: u32| {
            let s = now - now % w;
            s.saturating_sub(back * w)
        };
        let requests = |back: u32| WINDOWS.map(|w| format!("r{w}:{}", start(w, back)));
        let statuses =
            |back: u32| Self::STATUS.map(|f| format!("{f}:{}", start(STATUS_WINDOW, back)));
        let auth = |back: u32| format!("f:{}", start(AUTH_FAILURE_WINDOW, back));
        let admitted =
            |back: u32| Self::ADMITTED.map(|f| format!("{f}:{}", start(STATUS_WINDOW, back)));
        let mut read: Vec<String> = Vec::with_capacity(READ_LEN + 2 * quotas.len());
        read.extend(requests(0));
        read.extend(requests(1));
        read.extend(statuses(0));
        read.extend(statuses(1));
        read.push(auth(0));
        read.push(auth(1));
        read.push("v".to_owned());
        read.push("vr".to_owned());
        let (now_admitted, before_admitted) = (admitted(0), admitted(1));
        for class in quotas {
            read.push(now_admitted[class.index()].clone());
            read.push(before_admitted[class.index()].clone());
        }
        let mut stale: Vec<Stale> = Vec::new();
        let mut past = |window: u32, back: u32, names: &mut dyn Iterator<Item = String>| {
            stale.extend(names.map(|name| Stale {
                window,
                start: start(window, back),
                name,
            }));
        };
        for back in 2..=5 {
            past(
                1,
                back,
                &mut std::iter::once(format!("r1:{}", start(1, back))),
            );
        }
        for (w, name) in WINDOWS.into_iter().zip(requests(2)).skip(1) {
            past(w, 2, &mut std::iter::once(name));
        }
        past(STATUS_WINDOW, 2, &mut statuses(2).into_iter());
        past(AUTH_FAILURE_WINDOW, 2, &mut std::iter::once(auth(2)));
        let gone = admitted(2);
        past(
            STATUS_WINDOW,
            2,
            &mut quotas.iter().map(|c| gone[c.index()].clone()),
        );
        Fields {
            requests: requests(0),
            statuses: statuses(0),
            auth: auth(0),
            read,
            admitted: now_admitted,
            stale,
        }
    }

    /// The fields of windows past that were not yet past at a client's
    /// last sync (`last`; all of them for a client new here): those its
    /// HDEL has still to delete.
    fn stale_since(&self, last: Option<u32>) -> impl Iterator<Item = &str> {
        self.stale
            .iter()
            .filter(move |f| {
                last.is_none_or(|last| {
                    f.start > (last - last % f.window).saturating_sub(2 * f.window)
                })
            })
            .map(|f| f.name.as_str())
    }

    /// The fields a delta adds to, and by how much.
    fn increments<'a>(&'a self, d: &Delta) -> impl Iterator<Item = (&'a str, u32)> {
        let requests = self.requests.iter().map(move |f| (f.as_str(), d.requests));
        let statuses = self.statuses.iter().map(String::as_str).zip([
            d.answered,
            d.status_4xx,
            d.status_404,
            d.status_auth,
        ]);
        requests
            .chain(statuses)
            .chain(std::iter::once((self.auth.as_str(), d.auth_failures)))
            .chain(self.admitted.iter().map(String::as_str).zip(d.admitted))
            .filter(|(_, by)| *by > 0)
    }
}

/// The values of an `HMGET` reply as numbers (absent or not a number:
/// none); `None` for a reply that is not an array (an error).
fn numbers(reply: redis::Value) -> Option<Vec<Option<i64>>> {
    let redis::Value::Array(items) = reply else {
        return None;
    };
    Some(
        items
            .into_iter()
            .map(|v| match v {
                redis::Value::Int(n) => Some(n),
                redis::Value::BulkString(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
                _ => None,
            })
            .collect(),
    )
}

/// Add what a delta notes to a record's current windows.
fn add_delta(record: &mut ClientRecord, d: &Delta) {
    let add = |c: &mut Count, n: u32| c.current = c.current.saturating_add(n);
    for count in &mut record.requests {
        add(count, d.requests);
    }
    add(&mut record.answered, d.answered);
    add(&mut record.status_4xx, d.status_4xx);
    add(&mut record.status_404, d.status_404);
    add(&mut record.status_auth, d.status_auth);
    add(&mut record.auth_failures, d.auth_failures);
}

/// The other replicas' counts: the global counts of a read less what this
/// replica flushed (`flushed`, filed by sync time as Redis files it), and
/// their verdict unless it is this replica's own.
fn remote_counts(
    reply: &[Option<i64>; READ_LEN],
    flushed: ClientRecord,
    now: u32,
    replica: u32,
) -> Remote {
    let value = |i: usize| u32::try_from(reply[i].unwrap_or(0).max(0)).unwrap_or(u32::MAX);
    let less = |current: usize, previous: usize, mine: Count| Count {
        current: value(current).saturating_sub(mine.current),
        previous: value(previous).saturating_sub(mine.previous),
    };
    let mut counts = ClientRecord {
        clock: now,
        ..ClientRecord::default()
    };
    for w in 0..WINDOW_COUNT {
        counts.requests[w] = less(w, WINDOW_COUNT + w, flushed.requests[w]);
    }
    let s = 2 * WINDOW_COUNT;
    counts.answered = less(s, s + 4, flushed.answered);
    counts.status_4xx = less(s + 1, s + 5, flushed.status_4xx);
    counts.status_404 = less(s + 2, s + 6, flushed.status_404);
    counts.status_auth = less(s + 3, s + 7, flushed.status_auth);
    counts.auth_failures = less(s + 8, s + 9, flushed.auth_failures);
    let theirs = reply[READ_LEN - 1] != Some(i64::from(replica));
    Remote {
        counts,
        flushed,
        verdict_until: if theirs { value(READ_LEN - 2) } else { 0 },
        admitted: Admitted::default(),
    }
}

/// A random replica id (never 0), from the standard library's per-process
/// hash seed.
fn replica_id() -> u32 {
    use std::hash::BuildHasher;
    let id = std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as u32;
    id.max(1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(current: i64, previous: i64) -> [Option<i64>; READ_LEN] {
        let mut reply = [None; READ_LEN];
        for w in 0..WINDOW_COUNT {
            reply[w] = Some(current);
            reply[WINDOW_COUNT + w] = Some(previous);
        }
        reply
    }

    #[test]
    fn remote_counts_are_the_global_ones_less_what_we_flushed() {
        let now = 1_000_000;
        // We flushed 3 requests and a 404 at this sync.
        let mut flushed = ClientRecord::default();
        flushed.advance(now);
        add_delta(
            &mut flushed,
            &Delta {
                requests: 3,
                answered: 1,
                status_4xx: 1,
                status_404: 1,
                ..Delta::default()
            },
        );
        // Global: 10 requests in every current window, 4 in the previous
        // ones; 5 answers (2 of them 404s) this minute; another replica's
        // verdict for 30 s.
        let mut global = reply(10, 4);
        let s = 2 * WINDOW_COUNT;
        global[s] = Some(5);
        global[s + 2] = Some(2);
        global[READ_LEN - 2] = Some(i64::from(now) + 30);
        global[READ_LEN - 1] = Some(7);
        let remote = remote_counts(&global, flushed, now, 9);
        assert!(remote.verdict(now + 29) && !remote.verdict(now + 30));
        // Our own record (by request time) holds the same 3 requests.
        let mut own = ClientRecord::default();
        for _ in 0..3 {
            own.add_request(u64::from(now) * 1000, 1);
        }
        own.add_status(now, 404);
        let merged = remote.merged(&own, now);
        // Ours and theirs add up to the global counts again.
        assert_eq!(merged.rates(now)[1], 10 + overlap(4, now, 10));
        assert_eq!(merged.answered(now), 5);
        assert_eq!(merged.status_404(now), 2);
        // Our own verdict, read back, is not another replica's.
        assert!(!remote_counts(&global, flushed, now, 7).verdict(now));
    }

    #[test]
    fn what_others_admitted_is_the_global_count_less_ours() {
        let classes = [Class::PublicVisitor, Class::MaliciousBot];
        let (p, m) = (Class::PublicVisitor.index(), Class::MaliciousBot.index());
        let at = |ms: u64, requests: u32| Elsewhere {
            requests,
            over: Duration::from_millis(ms),
        };
        let mut mine = [0; CLASSES];
        let mut admitted = Admitted::default();
        // First read, 30.5 s into a minute: the others' two minutes count,
        // over the two minutes (40 + 6, 2 of them ours).
        mine[p] = 2;
        let now = 1_000_050_500;
        let first = admitted.update(&classes, &[Some(40), Some(6), None, None], &mine, now);
        assert_eq!((first[p], first[m]), (at(90_500, 44), at(90_500, 0)));
        // 2 more of ours, 46 in all, 100 ms later: the others admitted 4.
        let next = admitted.update(
            &classes,
            &[Some(46), Some(6), Some(0), None],
            &mine,
            now + 100,
        );
        assert_eq!((next[p], next[m]), (at(100, 4), at(100, 0)));
        // The minute turns: 50 ended the last one, 3 begin this one.
        let turned = admitted.update(
            &classes,
            &[Some(3), Some(50), Some(1), Some(0)],
            &[0; CLASSES],
            now + 30_000,
        );
        assert_eq!((turned[p], turned[m]), (at(29_900, 7), at(29_900, 1)));
        // The key expired and began again: all of 5 is new, 2 are ours.
        let again = admitted.update(
            &classes,
            &[Some(2), None, Some(1), None],
            &mine,
            now + 30_100,
        );
        assert_eq!((again[p], again[m]), (at(100, 0), at(100, 0)));
        // Odd values count as nothing, never as a charge.
        let odd = admitted.update(
            &classes,
            &[None, Some(-7), Some(-1), None],
            &[0; CLASSES],
            now + 30_200,
        );
        assert_eq!((odd[p], odd[m]), (at(100, 0), at(100, 0)));
        // Ours sent in a sync that was never answered (4, taken as
        // applied) are not the others' at the next read.
        admitted.sent(&[4, 0, 0, 0, 0]);
        let after = admitted.update(
            &classes,
            &[Some(4), Some(50), Some(1), None],
            &[0; CLASSES],
            now + 30_300,
        );
        assert_eq!(after[p].requests, 0);
        admitted.sent(&[4, 0, 0, 0, 0]);
        let _ = admitted.update(
            &classes,
            &[Some(10), None, None, None],
            &[0; CLASSES],
            now + 30_400,
        );
        let later_yet = admitted.update(
            &classes,
            &[Some(11), None, None, None],
            &[0; CLASSES],
            now + 30_500,
        );
        assert_eq!(later_yet[p].requests, 1, "what was sent counts once");
        // Minutes later, the two minutes count again, over two minutes.
        let later = admitted.update(
            &classes,
            &[Some(9), Some(1), None, None],
            &[0; CLASSES],
            now + 330_000,
        );
        assert_eq!(later[p], at(60_500, 10));
    }

    #[test]
    fn requests_just_before_a_window_turns_count_once() {
        // Ten requests at 1,000,199.9 s, flushed at 1,000,200 s: Redis files
        // them in the window starting at 1,000,200 (sync time), our record
        // in the one before (request time). Alone, we must still see 10.
        let (noted, synced) = (1_000_199_900u64, 1_000_200);
        let mut own = ClientRecord::default();
        for _ in 0..10 {
            own.add_request(noted, 1);
        }
        let mut flushed = ClientRecord::default();
        flushed.advance(synced);
        add_delta(
            &mut flushed,
            &Delta {
                requests: 10,
                ..Delta::default()
            },
        );
        let remote = remote_counts(&reply(10, 0), flushed, synced, 1);
        let merged = remote.merged(&own, synced);
        assert_eq!(merged.rates(synced), own.rates(synced));
    }

    #[test]
    fn a_clock_near_the_epoch_breaks_nothing() {
        // A machine whose clock was never set: seconds after 1970.
        for now in [0, 1, 59, 61, 299, 601] {
            let fields = Fields::at(now, &Class::ALL);
            assert!(fields.read.iter().all(|f| !is_stale(f.as_bytes(), now)));
            let _ = fields.stale_since(Some(now.saturating_sub(1))).count();
            let mut admitted = Admitted::default();
            let global = [Some(1); 2 * CLASSES];
            let now_ms = u64::from(now) * 1000;
            admitted.update(&Class::ALL, &global, &[0; CLASSES], now_ms);
            admitted.update(&Class::ALL, &global, &[0; CLASSES], now_ms + 10);
        }
    }

    #[test]
    fn each_sync_deletes_only_what_went_stale_since_the_last() {
        let fields = Fields::at(1_000_035, &[]);
        let since = |last| {
            let mut names: Vec<&str> = fields.stale_since(last).collect();
            names.sort_unstable();
            names
        };
        // In the same second: nothing new.
        assert!(since(Some(1_000_035)).is_empty());
        // A second later: one 1-second field.
        assert_eq!(since(Some(1_000_034)), ["r1:1000033"]);
        // Three seconds later.
        assert_eq!(
            since(Some(1_000_032)),
            ["r1:1000031", "r1:1000032", "r1:1000033"]
        );
        // Across a 10-second turn: that window's field too; the 1-second
        // fields further back wait for the sweep.
        assert_eq!(
            since(Some(1_000_029)),
            [
                "r10:1000010",
                "r1:1000030",
                "r1:1000031",
                "r1:1000032",
                "r1:1000033"
            ]
        );
        // Across a minute's turn: the minute's fields too, not the
        // 5 minutes'.
        let turned = since(Some(1_000_019));
        assert!(
            turned.contains(&"r60:999900") && turned.contains(&"x:999900"),
            "{turned:?}"
        );
        assert!(!turned.contains(&"f:999300"), "{turned:?}");
        // New here: everything.
        assert!(since(None).contains(&"f:999300"));
        assert_eq!(since(None).len(), fields.stale.len());
    }

    #[test]
    fn fields_of_windows_past_are_stale() {
        let now = 1_000_005;
        for (field, stale) in [
            ("r1:1000004", false),
            ("r1:1000003", true),
            ("r10:1000000", false),
            ("r10:999990", false),
            ("r10:999980", true),
            ("r300:999600", false),
            ("r300:999300", true),
            ("x:999840", true),
            ("x:999900", false),
            ("q4:999840", true),
            ("q4:999900", false),
            ("f:999300", true),
            ("v", false),
            ("vr", false),
            ("r7:1", false),
            ("zz:1", false),
            ("r1:notanumber", false),
        ] {
            assert_eq!(is_stale(field.as_bytes(), now), stale, "{field}");
        }
        // Nothing the current read asks for is ever stale.
        let fields = Fields::at(now, &Class::ALL);
        assert!(fields.read.iter().all(|f| !is_stale(f.as_bytes(), now)));
    }

    #[test]
    fn odd_replies_read_as_numbers_or_nothing() {
        use redis::Value;
        let reply = Value::Array(vec![
            Value::Int(3),
            Value::BulkString(b"12".to_vec()),
            Value::BulkString(b"oops".to_vec()),
            Value::Nil,
            Value::SimpleString("x".into()),
        ]);
        assert_eq!(
            numbers(reply),
            Some(vec![Some(3), Some(12), None, None, None])
        );
        assert_eq!(numbers(Value::Int(1)), None);
    }

    #[test]
    fn fields_name_each_window_by_its_start() {
        let fields = Fields::at(1_000_030, &[Class::PayingCustomer]);
        assert_eq!(fields.read.len(), READ_LEN + 2);
        assert_eq!(fields.read[READ_LEN..], ["q2:1000020", "q2:999960"]);
        let stale: Vec<&str> = fields.stale_since(None).collect();
        assert!(stale.contains(&"q2:999900"));
        assert_eq!(fields.read[2], "r60:1000020");
        assert_eq!(fields.read[6], "r60:1000020".replace("1000020", "999960"));
        assert_eq!(fields.read[2 * WINDOW_COUNT + 1], "x:1000020");
        assert!(stale.contains(&"r60:999900"));
        assert!(stale.iter().all(|f| !fields.read.iter().any(|r| r == f)));
        let mut admitted = [0; CLASSES];
        admitted[Class::ServiceClient.index()] = 3;
        let d = Delta {
            requests: 2,
            status_404: 1,
            admitted,
            ..Delta::default()
        };
        let incr: Vec<(&str, u32)> = fields.increments(&d).collect();
        assert_eq!(
            incr,
            [
                ("r1:1000030", 2),
                ("r10:1000030", 2),
                ("r60:1000020", 2),
                ("r300:999900", 2),
                ("n:1000020", 1),
                ("q3:1000020", 3),
            ]
        );
    }

    fn overlap(events: u32, now: u32, window: u32) -> u32 {
        super::super::overlap(events, now, window)
    }

    /// Shared state that never syncs (nothing listens on its port).
    fn unsynced(key_prefix: &str) -> Shared {
        Shared::new(
            SharedConfig {
                servers: Servers::One("redis://127.0.0.1:1".into()),
                tls_ca: None,
                key_prefix: key_prefix.into(),
                sync_interval: Duration::from_millis(100),
                verdict_ttl: Duration::from_secs(60),
            },
            1000,
        )
    }

    #[test]
    fn notes_merge_per_client_and_stay_bounded() {
        let shared = unsynced("t:");
        let a = ClientKey::of("192.0.2.1".parse().unwrap());
        shared.note_request(a, false);
        shared.note_request(a, true);
        shared.note_status(a, 403);
        shared.note_verdict(a);
        let notes = shared.take_notes();
        let d = notes[0].1;
        assert_eq!(notes.len(), 1);
        assert_eq!((d.requests, d.auth_failures, d.status_auth), (2, 1, 1));
        assert!(d.verdict);
        // Twice as many clients as fit: every shard fills, none grows past.
        for i in 0..(2 * MAX_PENDING as u32) {
            shared.note_request(ClientKey::of(std::net::Ipv4Addr::from(i).into()), false);
        }
        assert_eq!(shared.take_notes().len(), MAX_PENDING);
    }

    #[test]
    fn what_a_client_costs_in_memory_with_redis() {
        // The deploy guide quotes it, with the map's key and links.
        assert_eq!(std::mem::size_of::<Remote>(), 288);
    }

    #[test]
    fn a_client_has_one_key_in_one_cluster_slot() {
        let shared = unsynced("usher:");
        let key = ClientKey::of("192.0.2.1".parse().unwrap());
        assert_eq!(
            shared.client_key(key),
            "usher:c:{00000000000000000000ffffc0000201}"
        );
    }
}
