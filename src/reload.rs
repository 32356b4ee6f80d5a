//! Hot reload: on SIGHUP, `POST /reload` or a change to any file the
//! configuration reads, build a complete new [`Settings`] and swap it in.
//!
//! One task does every reload, so concurrent triggers queue up and never
//! overlap. A reload reads and validates every file afresh on a blocking
//! thread; only a set that is valid as a whole replaces the running one (a
//! failure is logged, counted and answered, and the old set keeps serving).
//! What usher has learned carries over (see [`Classifier::reload`]), and
//! requests already running finish on the settings they started with.
//!
//! Files are watched through their parent directories, not one by one: an
//! editor's rename-over and a Kubernetes ConfigMap's swap of its `..data`
//! symlink both show up as events in the directory, and the files are read
//! again through their configured paths. Events are debounced, and a reload
//! happens only when the content of some input (config, key files, rule
//! files matched by the globs now, address lists) differs from the last
//! read, so usher's own reads never loop. Where the watcher cannot be set
//! up, the files are polled instead.
//!
//! Some settings are fixed at start (listeners, access log, connection
//! timeouts, upstream pool, state capacity): a reload that changes them
//! applies everything else and warns, naming the keys that need a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::classify::Classifier;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Settings};

/// Quiet time after the last file event before a reload is attempted.
const DEBOUNCE: Duration = Duration::from_millis(400);

/// The longest file events may postpone a reload (a directory that never
/// falls quiet still gets its files checked).
const MAX_DELAY: Duration = Duration::from_secs(3);

/// How often files are checked when they cannot be watched.
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How the configuration is produced: the config file (if any) read and
/// combined with the command line's overrides, as at start.
#[derive(Clone)]
pub struct Source {
    path: Option<PathBuf>,
    load: Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("path", &self.path).finish()
    }
}

impl Source {
    /// A source reading `path` (none: built-in defaults, nothing to watch)
    /// through `load`.
    pub fn new(
        path: Option<PathBuf>,
        load: impl Fn() -> Result<Config, ConfigError> + Send + Sync + 'static,
    ) -> Self {
        Source {
            path,
            load: Arc::new(load),
        }
    }
}

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `POST /reload` on the admin listener.
    Admin,
    /// A change in a watched directory (or a poll).
    Files,
}

impl Trigger {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
            Trigger::Files => "file_change",
        }
    }
}

/// A reload that took effect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Inputs whose content differs from the replaced set's (added,
    /// removed or changed files).
    pub changed: Vec<PathBuf>,
    /// Keys that differ from the running process's but only take effect
    /// after a restart.
    pub restart_required: Vec<&'static str>,
}

/// Why a reload did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid; the old one keeps serving.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The build task ended without an answer (a panic in a debug build;
    /// release builds abort on panic). The old configuration keeps serving.
    #[error("building the new configuration failed unexpectedly")]
    Panicked,
    /// The reload task is gone (the server is stopping).
    #[error("reloading is not available")]
    Stopped,
}

type Reply = oneshot::Sender<Result<Option<Applied>, ReloadError>>;

/// Asks the reload task for a reload. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<(Trigger, Reply)>,
}

impl Handle {
    /// Reload now, after any reload already queued. `Ok(None)` when the
    /// trigger was a file change and no input's content changed.
    pub async fn reload(&self, trigger: Trigger) -> Result<Option<Applied>, ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((trigger, reply))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        answer.await.map_err(|_| ReloadError::Stopped)?
    }
}

/// Start reloading: the reload task, SIGHUP, and (with a config file) the
/// file watcher. `running` is the configuration the server was started
/// with. Call from within the runtime, before announcing readiness, so a
/// SIGHUP is never met by the default action (exit).
pub fn start(source: Source, running: Config, proxy: Arc<Proxy>, metrics: Arc<Metrics>) -> Handle {
    let (tx, rx) = mpsc::channel(16);
    let handle = Handle { tx };
    let changed = Arc::new(Notify::new());
    let poll = Arc::new(AtomicBool::new(false));
    let watch = source
        .path
        .is_some()
        .then(|| Watch::new(changed.clone(), poll.clone()));
    let inputs = Inputs::of(
        source.path.as_deref(),
        &running,
        &proxy.settings().classifier,
    );
    // Watch first, then read: a change after this point is seen. (One
    // during the startup load itself, before this, waits for the next
    // change or trigger.) Small files, read once at start.
    let mut reloader = Reloader {
        source,
        running,
        proxy,
        metrics,
        seen: Fingerprint::default(),
        loaded: Fingerprint::default(),
        inputs,
        watch,
    };
    reloader.refresh_watch();
    reloader.seen = reloader.inputs.fingerprint();
    reloader.loaded = reloader.seen.clone();
    let watching = reloader.watch.is_some();
    tokio::spawn(reloader.run(rx));

    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            let handle = handle.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    if let Err(ReloadError::Stopped) = handle.reload(Trigger::Signal).await {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot handle SIGHUP; reload with POST /reload"),
    }
    if watching {
        tokio::spawn(debounce(changed, poll, handle.clone()));
    }
    handle
}

/// Wait for file events (or a poll tick), let them settle, then ask for a
/// reload that happens only if some input changed.
async fn debounce(changed: Arc<Notify>, poll: Arc<AtomicBool>, handle: Handle) {
    loop {
        let polling = poll.load(Ordering::Relaxed);
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL), if polling => {}
        }
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(DEBOUNCE) => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if let Err(ReloadError::Stopped) = handle.reload(Trigger::Files).await {
            return;
        }
    }
}

/// The reload task's state.
struct Reloader {
    source: Source,
    /// What the listeners, pool and client state were made with.
    running: Config,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    /// The files the running settings were built from.
    inputs: Inputs,
    /// The inputs' content as last read (by any attempt).
    seen: Fingerprint,
    /// The inputs' content as the running settings read them.
    loaded: Fingerprint,
    watch: Option<Watch>,
}

impl Reloader {
    async fn run(mut self, mut rx: mpsc::Receiver<(Trigger, Reply)>) {
        while let Some((trigger, reply)) = rx.recv().await {
            let result = self.reload(trigger).await;
            let _ = reply.send(result);
        }
    }

    async fn reload(&mut self, trigger: Trigger) -> Result<Option<Applied>, ReloadError> {
        let inputs = self.inputs.clone();
        let known = (trigger == Trigger::Files).then(|| self.seen.clone());
        let load = self.source.load.clone();
        let previous = self.proxy.settings();
        // The fingerprint is taken before anything is read for the build,
        // so a change that lands during the build is seen by the next check.
        let job = tokio::task::spawn_blocking(move || {
            let now = inputs.fingerprint();
            if known.as_ref() == Some(&now) {
                return (now, None, Vec::new());
            }
            // When the new config reads but what it names does not build
            // (a keys file not there yet), the files it names are watched
            // too, so the file that fixes it triggers the next reload.
            let mut wanted = Vec::new();
            let built =
                load().and_then(
                    |config| match Classifier::reload(&config, &previous.classifier) {
                        Ok(classifier) => Ok((config, classifier)),
                        Err(e) => {
                            wanted = config.identity.files(&config.origin.dir);
                            wanted.extend(
                                crate::rules::file::rule_files(&config.rules, &config.origin.dir)
                                    .unwrap_or_default(),
                            );
                            Err(e)
                        }
                    },
                );
            (now, Some(built), wanted)
        });
        let (now, built, wanted) = match job.await {
            Ok(done) => done,
            Err(_) => return Err(self.failed(trigger, ReloadError::Panicked)),
        };
        self.seen = now;
        let Some(built) = built else {
            tracing::debug!("watched files changed nothing usher reads");
            return Ok(None);
        };
        if !wanted.is_empty() {
            for file in wanted {
                if !self.inputs.files.contains(&file) {
                    self.inputs.files.push(file);
                }
            }
            self.refresh_watch();
            self.seen = self.inputs.fingerprint();
        }
        let (config, classifier) = built.map_err(|e| self.failed(trigger, e.into()))?;
        Ok(Some(self.apply(trigger, &config, classifier)))
    }

    fn failed(&self, trigger: Trigger, error: ReloadError) -> ReloadError {
        self.metrics.count_reload(false);
        tracing::error!(
            trigger = trigger.as_str(),
            error = %error,
            "configuration reload failed; the running configuration stays in effect"
        );
        error
    }

    fn apply(&mut self, trigger: Trigger, config: &Config, classifier: Classifier) -> Applied {
        let inputs = Inputs::of(self.source.path.as_deref(), config, &classifier);
        let rules = classifier.rules().rules().len();
        let before = self.proxy.settings().classifier.identity().remote_jwks();
        let fresh: Vec<_> = classifier
            .identity()
            .remote_jwks()
            .into_iter()
            .filter(|jwks| !before.iter().any(|old| Arc::ptr_eq(old, jwks)))
            .collect();
        self.proxy
            .replace_settings(Settings::new(config, classifier));
        // Key sets carried over keep their fetch task; new ones need one.
        // Replaced ones' tasks end once the last request using them is done.
        for jwks in fresh {
            tokio::spawn(crate::identity::jwks::RemoteJwks::run(
                Arc::downgrade(&jwks),
                self.metrics.jwks.clone(),
            ));
        }
        self.metrics.count_reload(true);

        let applied = Applied {
            changed: changed(&self.loaded, &self.seen),
            restart_required: restart_required(&self.running, config),
        };
        self.loaded = self.seen.clone();
        self.inputs = inputs;
        self.refresh_watch();
        if !applied.restart_required.is_empty() {
            tracing::warn!(
                keys = ?applied.restart_required,
                "these settings changed but take effect only after a restart; the rest was applied"
            );
        }
        if self.source.path.is_none() {
            tracing::info!(
                trigger = trigger.as_str(),
                "configuration reloaded: no config file, the defaults and command line were applied again"
            );
        } else {
            tracing::info!(
                trigger = trigger.as_str(),
                rules,
                changed = ?applied.changed,
                "configuration reloaded"
            );
        }
        applied
    }

    fn refresh_watch(&mut self) {
        if let Some(watch) = &mut self.watch {
            watch.set(self.inputs.dirs());
        }
    }
}

/// The keys whose new values only take effect after a restart, where
/// `new` differs from the values the process runs with.
pub fn restart_required(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.timeouts, &new.timeouts);
    [
        ("listen", running.listen == new.listen),
        ("admin", running.admin == new.admin),
        ("access_log", running.access_log == new.access_log),
        ("timeouts.header_read", a.header_read == b.header_read),
        ("timeouts.connect", a.connect == b.connect),
        ("timeouts.upstream_idle", a.upstream_idle == b.upstream_idle),
        ("timeouts.shutdown", a.shutdown == b.shutdown),
        ("connections", running.connections == new.connections),
        (
            "state.capacity",
            running.state.capacity == new.state.capacity,
        ),
        ("state.backend", running.state.backend == new.state.backend),
        ("state.url", running.state.url == new.state.url),
        ("state.cluster", running.state.cluster == new.state.cluster),
        ("state.tls_ca", running.state.tls_ca == new.state.tls_ca),
        (
            "state.key_prefix",
            running.state.key_prefix == new.state.key_prefix,
        ),
        (
            "state.sync_interval",
            running.state.sync_interval == new.state.sync_interval,
        ),
        (
            "state.verdict_ttl",
            running.state.verdict_ttl == new.state.verdict_ttl,
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(key, _)| key)
    .collect()
}

/// Each input file's content hash (`None`: it could not be read).
type Fingerprint = BTreeMap<PathBuf, Option<u64>>;

/// The inputs whose entries differ between two fingerprints.
fn changed(before: &Fingerprint, now: &Fingerprint) -> Vec<PathBuf> {
    let paths: BTreeSet<&PathBuf> = before.keys().chain(now.keys()).collect();
    paths
        .into_iter()
        .filter(|p| before.get(*p) != now.get(*p))
        .cloned()
        .collect()
}

/// What a configuration reads.
#[derive(Clone, Debug, Default)]
struct Inputs {
    /// The config file.
    config: Option<PathBuf>,
    /// The rule globs, with the folder they are relative to.
    globs: Vec<String>,
    base: PathBuf,
    /// Every other file read: key files, rule files, address lists.
    files: Vec<PathBuf>,
}

impl Inputs {
    fn of(config_path: Option<&Path>, config: &Config, classifier: &Classifier) -> Inputs {
        Inputs {
            config: config_path.map(Path::to_owned),
            globs: config.rules.clone(),
            base: config.origin.dir.clone(),
            files: classifier.sources().to_vec(),
        }
    }

    /// Every input's content, read now through its configured path (so
    /// through symlinks); rule globs are matched anew, so a rule file
    /// added or removed counts as a change.
    fn fingerprint(&self) -> Fingerprint {
        let globbed = crate::rules::file::rule_files(&self.globs, &self.base).unwrap_or_default();
        self.config
            .iter()
            .chain(&self.files)
            .chain(&globbed)
            .map(|path| (path.clone(), content_hash(path)))
            .collect()
    }

    /// The directories to watch: each input's, each glob's, and the parent
    /// of any of these that is itself a symlink (a ConfigMap subfolder).
    fn dirs(&self) -> BTreeSet<PathBuf> {
        let globs = self.globs.iter().map(|g| self.base.join(g));
        let mut dirs: BTreeSet<PathBuf> = self
            .config
            .iter()
            .cloned()
            .chain(self.files.iter().cloned())
            .chain(globs)
            .map(|p| parent(&p))
            .collect();
        let linked: Vec<PathBuf> = dirs
            .iter()
            .filter(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()))
            .map(|d| parent(d))
            .collect();
        dirs.extend(linked);
        dirs
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn content_hash(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}

/// The directory watcher, or polling where it cannot work.
struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
    changed: Arc<Notify>,
    poll: Arc<AtomicBool>,
}

impl Watch {
    fn new(changed: Arc<Notify>, poll: Arc<AtomicBool>) -> Watch {
        let wake = changed.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match event {
                Ok(event) if !relevant(&event.kind) => {}
                // An error may mean lost events: check the files anyway.
                _ => wake.notify_one(),
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; checking them every {}s instead", POLL_INTERVAL.as_secs());
                poll.store(true, Ordering::Relaxed);
                None
            }
        };
        Watch {
            watcher,
            dirs: BTreeSet::new(),
            changed,
            poll,
        }
    }

    /// Watch exactly `dirs`. Each is watched again even if it was already,
    /// so a directory replaced through a symlink is followed to its new
    /// inode. A directory that cannot be watched turns polling on.
    fn set(&mut self, dirs: BTreeSet<PathBuf>) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        for gone in self.dirs.difference(&dirs) {
            let _ = watcher.unwatch(gone);
        }
        let mut unwatched = Vec::new();
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                unwatched.push(format!("{}: {e}", dir.display()));
            }
        }
        let polling = !unwatched.is_empty();
        if polling {
            tracing::warn!(
                dirs = ?unwatched,
                "cannot watch these directories; checking the files every {}s instead",
                POLL_INTERVAL.as_secs()
            );
        }
        if self.poll.swap(polling, Ordering::Relaxed) != polling {
            // Wake the debounce loop so it picks up the new mode.
            self.changed.notify_one();
        }
        self.dirs = dirs;
    }
}

/// Whether an event can mean changed content: opening and reading files
/// (usher's own reads among them) cannot.
fn relevant(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_fixed_at_start_need_a_restart() {
        let running = Config::default();
        let mut new = Config {
            upstream: "http://127.0.0.1:4000".parse().unwrap(),
            ..Config::default()
        };
        new.timeouts.response_header = Duration::from_secs(1);
        assert!(restart_required(&running, &new).is_empty());
        new.listen = "127.0.0.1:1".parse().unwrap();
        new.state.capacity = 5_000;
        new.timeouts.connect = Duration::from_secs(9);
        assert_eq!(
            restart_required(&running, &new),
            ["listen", "timeouts.connect", "state.capacity"]
        );
    }

    #[test]
    fn fingerprints_follow_content_and_glob_matches() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        std::fs::write(rules.join("a.toml"), "# a").unwrap();
        let inputs = Inputs {
            config: None,
            globs: vec!["rules/*.toml".to_owned()],
            base: dir.path().to_owned(),
            files: vec![dir.path().join("keys.toml")],
        };
        let first = inputs.fingerprint();
        assert_eq!(first, inputs.fingerprint(), "reading changes nothing");
        assert_eq!(first[&dir.path().join("keys.toml")], None, "missing");

        std::fs::write(rules.join("b.toml"), "# b").unwrap();
        let second = inputs.fingerprint();
        assert_eq!(changed(&first, &second), [rules.join("b.toml")]);

        std::fs::write(rules.join("a.toml"), "# a, edited").unwrap();
        std::fs::remove_file(rules.join("b.toml")).unwrap();
        assert_eq!(
            changed(&second, &inputs.fingerprint()),
            [rules.join("a.toml"), rules.join("b.toml")]
        );
        assert_eq!(
            inputs.dirs().into_iter().collect::<Vec<_>>(),
            [dir.path().to_owned(), rules]
        );
    }

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
        assert!(!relevant(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(relevant(&EventKind::Create(CreateKind::Any)));
        assert!(relevant(&EventKind::Modify(ModifyKind::Any)));
    }
}
