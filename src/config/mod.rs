//! Configuration: `usher.toml` read once into validated types. Every value is
//! checked while it is deserialised, so each error names its key, file, line
//! and column; unknown keys are errors.

pub mod bounded_read;
pub mod connections;
mod diagnostic;
mod duration;
pub mod identity;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

use crate::forwarded::{Cidr, ClientIpHeader, TrustedProxies};

pub use connections::Connections;
pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use duration::parse_duration;
pub use identity::IdentityConfig;
pub use upstream::Upstream;

/// A configuration that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value is invalid.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file (or `<inline>`).
        file: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Values that are valid alone but not together.
    #[error("{file}: {message}")]
    Inconsistent {
        /// The file (or `<inline>`).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Every error found in files read together (the rule files, and key
    /// files beside them), with the warnings found on the way.
    #[error("{0}")]
    Diagnostics(Diagnostics),
}

/// The whole configuration of one usher.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the proxy listens for clients.
    pub listen: SocketAddr,
    /// The service requests are forwarded to.
    pub upstream: Upstream,
    /// Where the admin endpoints (`/metrics`, `/healthz`, `/readyz`) listen.
    pub admin: SocketAddr,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The header trusted proxies put the client address in.
    pub client_ip_header: ClientIpHeader,
    /// Where the per-request access log goes.
    pub access_log: AccessLog,
    /// Rule files (globs, relative to the config file).
    pub rules: Vec<String>,
    /// Names of the label headers.
    pub labels: Labels,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits on client connections and request heads.
    pub connections: Connections,
    /// Credential sources.
    pub identity: IdentityConfig,
    /// Per-client state.
    pub state: StateConfig,
    /// How crawler claims are checked by reverse DNS.
    pub crawlers: CrawlersConfig,
    /// Where this config was read from, to resolve relative paths and
    /// place errors found after parsing.
    #[serde(skip)]
    pub origin: Origin,
}

/// The file a config came from and its text.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// The file's name as given (`<defaults>` when there is none).
    pub file: String,
    /// The folder relative paths in the config are taken from.
    pub dir: std::path::PathBuf,
    /// The file's text.
    pub text: std::sync::Arc<str>,
}

impl Origin {
    /// An error at a byte span of the file.
    pub fn error_at(&self, span: Option<std::ops::Range<usize>>, message: String) -> ConfigError {
        match span {
            Some(span) => {
                let (line, column) = line_column(&self.text, span.start);
                ConfigError::Invalid {
                    file: self.file.clone(),
                    line,
                    column,
                    message,
                }
            }
            None => ConfigError::Inconsistent {
                file: self.file.clone(),
                message,
            },
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: Upstream::default(),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::default(),
            access_log: AccessLog::default(),
            rules: Vec::new(),
            labels: Labels::default(),
            timeouts: Timeouts::default(),
            connections: Connections::default(),
            identity: IdentityConfig::default(),
            state: StateConfig::default(),
            crawlers: CrawlersConfig::default(),
            origin: Origin {
                file: "<defaults>".to_owned(),
                dir: std::path::PathBuf::from("."),
                text: std::sync::Arc::from(""),
            },
        }
    }
}

/// Where access log lines go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// One JSON line per request on standard output.
    #[default]
    Stdout,
    /// No access log.
    Off,
}

/// Label header names; client-sent headers with these names or the prefix
/// are removed before classification.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Labels {
    /// Every incoming header starting with this prefix is removed.
    #[serde(deserialize_with = "label_prefix")]
    pub prefix: String,
    /// Carries the class.
    #[serde(deserialize_with = "header_name")]
    pub class: HeaderName,
    /// Carries the bot score.
    #[serde(deserialize_with = "header_name")]
    pub score: HeaderName,
    /// Carries the names of the rules that took effect.
    #[serde(deserialize_with = "header_name")]
    pub reasons: HeaderName,
    /// Carries the verified subject or client id.
    #[serde(deserialize_with = "header_name")]
    pub subject: HeaderName,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            prefix: "x-usher-".to_owned(),
            class: HeaderName::from_static("x-usher-class"),
            score: HeaderName::from_static("x-usher-score"),
            reasons: HeaderName::from_static("x-usher-reasons"),
            subject: HeaderName::from_static("x-usher-subject"),
        }
    }
}

/// How long usher waits for each step of a request.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A client must send a complete request head within this time.
    #[serde(deserialize_with = "duration::deserialize")]
    pub header_read: Duration,
    /// Connecting to the upstream.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect: Duration,
    /// From sending a request to the upstream's response head.
    #[serde(deserialize_with = "duration::deserialize")]
    pub response_header: Duration,
    /// The longest a body may pause, either way: a client's request body
    /// or the upstream's response body. Zero: no limit.
    #[serde(deserialize_with = "duration::deserialize_allow_zero")]
    pub body_idle: Duration,
    /// How long an idle pooled upstream connection is kept.
    #[serde(deserialize_with = "duration::deserialize")]
    pub upstream_idle: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: Duration::from_secs(10),
            connect: Duration::from_secs(2),
            response_header: Duration::from_secs(60),
            body_idle: Duration::from_secs(60),
            upstream_idle: Duration::from_secs(90),
            shutdown: Duration::from_secs(25),
        }
    }
}

/// Per-client state.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The most clients remembered at once; the least recently seen are
    /// evicted past it.
    #[serde(deserialize_with = "capacity")]
    pub capacity: usize,
    /// Where client state lives besides this process's memory.
    pub backend: Backend,
    /// The Redis server for `backend = "redis"` (`redis://` or `rediss://`).
    #[serde(deserialize_with = "redis_url")]
    pub url: Option<String>,
    /// Or a Redis Cluster, by some of its nodes.
    #[serde(deserialize_with = "redis_cluster")]
    pub cluster: Option<Vec<String>>,
    /// A CA (PEM) to trust for `rediss://` instead of the system's roots,
    /// relative to the config file's folder.
    pub tls_ca: Option<PathBuf>,
    /// Put before every key usher writes to Redis.
    #[serde(deserialize_with = "key_prefix")]
    pub key_prefix: String,
    /// How often local counts are flushed to Redis and global ones read
    /// back: how stale another replica's view can be.
    #[serde(deserialize_with = "sync_interval")]
    pub sync_interval: Duration,
    /// How long a `malicious_bot` verdict is shared with other replicas.
    #[serde(deserialize_with = "verdict_ttl")]
    pub verdict_ttl: Duration,
}

/// Where client state lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// This process only.
    #[default]
    Memory,
    /// This process, with counts and verdicts shared through Redis.
    Redis,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            capacity: 1_000_000,
            backend: Backend::Memory,
            url: None,
            cluster: None,
            tls_ca: None,
            key_prefix: "usher:".to_owned(),
            sync_interval: Duration::from_millis(100),
            verdict_ttl: Duration::from_secs(300),
        }
    }
}

impl StateConfig {
    /// How to share state, when the backend is Redis: reads the CA file
    /// (relative to `base`, the folder of the config file `file`) and
    /// checks that a Redis client can be made of it all, without
    /// connecting.
    pub fn shared(
        &self,
        base: &std::path::Path,
        file: &str,
    ) -> Result<Option<crate::state::shared::SharedConfig>, ConfigError> {
        use crate::state::redis_link::{Link, Servers};
        if self.backend != Backend::Redis {
            return Ok(None);
        }
        let servers = match (&self.url, &self.cluster) {
            (Some(url), _) => Servers::One(url.clone()),
            (None, Some(nodes)) => Servers::Cluster(nodes.clone()),
            (None, None) => return Ok(None),
        };
        let tls_ca = match &self.tls_ca {
            Some(path) => {
                let path = base.join(path);
                let pem = bounded_read::read(&path, MAX_KEY_FILE, "CA files").map_err(|e| {
                    ConfigError::Inconsistent {
                        file: file.to_owned(),
                        message: format!("state.tls_ca: cannot read {}: {e}", path.display()),
                    }
                })?;
                let not_pem = |why: &str| ConfigError::Inconsistent {
                    file: path.display().to_string(),
                    message: format!("state.tls_ca: not a CA certificate in PEM: {why}"),
                };
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(not_pem("no BEGIN CERTIFICATE line"));
                }
                Link::new(&servers, Some(&pem), Duration::from_secs(1))
                    .map_err(|e| not_pem(e.category()))?;
                Some(pem)
            }
            None => None,
        };
        Ok(Some(crate::state::shared::SharedConfig {
            servers,
            tls_ca,
            key_prefix: self.key_prefix.clone(),
            sync_interval: self.sync_interval,
            verdict_ttl: self.verdict_ttl,
        }))
    }

    /// Whether the Redis URLs use TLS (`rediss://`).
    fn uses_tls(&self) -> bool {
        let tls = |url: &String| url.starts_with("rediss://");
        self.url
            .iter()
            .chain(self.cluster.iter().flatten())
            .any(tls)
    }
}

fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    check_redis_url(&url).map_err(serde::de::Error::custom)?;
    Ok(Some(url))
}

/// Parsed only; nothing connects until `serve` starts. The error does not
/// echo the URL, which may hold a password.
fn check_redis_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("url must start with redis:// or rediss://".to_owned());
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("not a Redis URL: {}", e.category()))
}

/// The largest key or CA file read (PEM, JWKS, HMAC secret).
pub const MAX_KEY_FILE: u64 = 1 << 20;

/// The largest API key file read (a hash and an owner per key).
pub const MAX_API_KEYS_FILE: u64 = 32 << 20;

/// The most nodes `state.cluster` may name.
const MAX_CLUSTER_NODES: usize = 64;

fn redis_cluster<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    /// A list of strings; anything else is refused without echoing it (a
    /// lone URL may hold a password).
    struct Nodes;
    impl<'de> serde::de::Visitor<'de> for Nodes {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of redis:// or rediss:// URLs")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut nodes = Vec::new();
            while let Some(url) = seq.next_element::<String>()? {
                nodes.push(url);
            }
            Ok(nodes)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom(
                "cluster must be a list of URLs, even of one: [\"redis://host:6379\"]",
            ))
        }
    }
    let nodes = d.deserialize_any(Nodes)?;
    if nodes.is_empty() || nodes.len() > MAX_CLUSTER_NODES {
        return Err(serde::de::Error::custom(format!(
            "cluster must name 1 to {MAX_CLUSTER_NODES} nodes"
        )));
    }
    for (i, url) in nodes.iter().enumerate() {
        check_redis_url(url).map_err(|e| serde::de::Error::custom(format!("cluster[{i}]: {e}")))?;
    }
    let tls = nodes[0].starts_with("rediss://");
    if nodes.iter().any(|url| url.starts_with("rediss://") != tls) {
        return Err(serde::de::Error::custom(
            "cluster nodes must all use redis:// or all rediss://",
        ));
    }
    Ok(Some(nodes))
}

fn key_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(d)?;
    if prefix.len() > 64
        || prefix
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b == b'{' || b == b'}')
    {
        return Err(serde::de::Error::custom(
            "key_prefix must be at most 64 printable ASCII characters, without spaces or braces",
        ));
    }
    Ok(prefix)
}

fn sync_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let range = (Duration::from_millis(10), Duration::from_secs(1));
    duration::deserialize_within(d, range, "sync_interval", "10ms and 1s")
}

/// A client's hash in Redis lives 10 minutes past its last write; a
/// verdict cannot outlive it.
fn verdict_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let range = (Duration::from_secs(1), Duration::from_secs(600));
    duration::deserialize_within(d, range, "verdict_ttl", "1s and 10m")
}

/// Reverse DNS for crawler claims (the crawlers themselves are defined in
/// rule files).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrawlersConfig {
    /// DNS servers (`address` or `address:port`); empty means the system's
    /// (`/etc/resolv.conf`).
    #[serde(deserialize_with = "dns_servers")]
    pub dns_servers: Vec<SocketAddr>,
    /// The longest a request waits for a lookup; past it the request is
    /// classified on what is known and the lookup goes on for the next.
    #[serde(deserialize_with = "duration::deserialize")]
    pub dns_budget: Duration,
    /// The longest one verification (reverse then forward lookup) may take.
    #[serde(deserialize_with = "duration::deserialize")]
    pub dns_timeout: Duration,
    /// How long a verification's answer is remembered.
    #[serde(deserialize_with = "duration::deserialize")]
    pub dns_cache_ttl: Duration,
}

impl Default for CrawlersConfig {
    fn default() -> Self {
        CrawlersConfig {
            dns_servers: Vec::new(),
            dns_budget: Duration::from_millis(100),
            dns_timeout: Duration::from_secs(1),
            dns_cache_ttl: Duration::from_secs(3600),
        }
    }
}

fn dns_servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    serde::de::Error::custom(format!("`{s}` is not an address or address:port"))
                })
        })
        .collect()
}

fn capacity<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    connections::within(d, 1_000, 100_000_000, "capacity (clients)")
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        config.origin.dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        Ok(config)
    }

    /// Parse and validate config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut config: Config = parse_toml(text, file)?;
        config.origin = Origin {
            file: file.to_owned(),
            dir: std::path::PathBuf::from("."),
            text: std::sync::Arc::from(text),
        };
        config.check_consistency(file)?;
        Ok(config)
    }

    /// Checks between keys, after each key is valid on its own.
    pub fn check_consistency(&self, file: &str) -> Result<(), ConfigError> {
        let inconsistent = |message: String| ConfigError::Inconsistent {
            file: file.to_owned(),
            message,
        };
        if self.listen == self.admin && self.listen.port() != 0 {
            return Err(inconsistent(format!(
                "`listen` and `admin` are both {}; they must differ",
                self.listen
            )));
        }
        let state = &self.state;
        if state.backend == Backend::Redis {
            match (&state.url, &state.cluster) {
                (None, None) => {
                    return Err(inconsistent(
                        "state: backend = \"redis\" needs `url` (redis://host:6379 or rediss://…) or `cluster` (a list of such URLs)"
                            .to_owned(),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(inconsistent(
                        "state: set `url` for one Redis server or `cluster` for a Redis Cluster, not both"
                            .to_owned(),
                    ));
                }
                _ => {}
            }
            if state.tls_ca.is_some() && !state.uses_tls() {
                return Err(inconsistent(
                    "state: `tls_ca` is for rediss:// URLs; these use redis://".to_owned(),
                ));
            }
        }
        let l = &self.labels;
        let names = [&l.class, &l.score, &l.reasons, &l.subject];
        for (i, a) in names.iter().enumerate() {
            if names[i + 1..].contains(a) {
                return Err(inconsistent(format!(
                    "labels: header `{a}` is used for two labels"
                )));
            }
        }
        Ok(())
    }

    /// Values that are valid but probably not what was meant: today,
    /// `trusted_proxies` entries with host bits set (`10.0.0.1/8`, which
    /// trusts all of `10.0.0.0/8`).
    pub fn warnings(&self) -> Vec<Diagnostic> {
        #[derive(Deserialize)]
        struct Proxies {
            #[serde(default)]
            trusted_proxies: Vec<toml::Spanned<String>>,
        }
        let Ok(proxies) = toml::from_str::<Proxies>(&self.origin.text) else {
            return Vec::new();
        };
        proxies
            .trusted_proxies
            .iter()
            .filter_map(|entry| {
                let message = Cidr::host_bits_warning(entry.get_ref())?;
                Some(Diagnostic::at(
                    Severity::Warning,
                    &self.origin,
                    Some(entry.span()),
                    None,
                    format!("trusted_proxies: {message}"),
                ))
            })
            .collect()
    }

    /// The trusted proxies, ready to resolve client addresses.
    pub fn trusted_proxies(&self) -> TrustedProxies {
        TrustedProxies::new(self.trusted_proxies.clone(), self.client_ip_header)
    }
}

/// Deserialize TOML text strictly; errors carry `file:line:column` and the
/// key. Shared by every file usher reads.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigError> {
    toml::Deserializer::parse(text)
        .map_err(|e| invalid(text, file, String::new(), &e))
        .and_then(|de| {
            serde_path_to_error::deserialize(de)
                .map_err(|e| invalid(text, file, e.path().to_string(), e.inner()))
        })
}

/// Deserialize one value of a parsed TOML document strictly, like
/// [`parse_toml`]: errors carry `file:line:column` and the key (relative
/// to the value). Lets a loader go on past one bad table of a file.
pub fn parse_toml_value<T: serde::de::DeserializeOwned>(
    value: toml::Spanned<toml::de::DeValue<'_>>,
    text: &str,
    file: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::de::ValueDeserializer::from(value))
        .map_err(|e| invalid(text, file, e.path().to_string(), e.inner()))
}

/// A value written as one item or a list of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// `key = "x"`
    One(T),
    /// `key = ["x", "y"]`
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The items, as a list.
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// `deserialize_with` helper: one item or a list, as a list.
pub fn one_or_many<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    OneOrMany::deserialize(d).map(OneOrMany::into_vec)
}

/// A TOML syntax error as `file:line:column: message`.
pub(crate) fn toml_error(text: &str, file: &str, err: &toml::de::Error) -> ConfigError {
    invalid(text, file, String::new(), err)
}

/// Turn a TOML error into `file:line:column: key: message`.
fn invalid(text: &str, file: &str, key: String, err: &toml::de::Error) -> ConfigError {
    let (line, column) = err
        .span()
        .map(|span| line_column(text, span.start))
        .unwrap_or((1, 1));
    // `Spanned` values show in the path as a field of their own.
    let key = key.replace(".$__serde_spanned_private_value", "");
    let key = if key.is_empty() || key == "?" || key == "." {
        String::new()
    } else {
        format!("`{key}`: ")
    };
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        column,
        message: format!("{key}{}", err.message().trim_end()),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Headers a label name or prefix must never cover: usher reads them to
/// find the client, so stripping them as forged labels would break trust.
const FORWARDING_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// A label header name: a valid `x-` header that is not a forwarding header.
fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let s = String::deserialize(d)?;
    let name = HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a valid header name")))?;
    if !name.as_str().starts_with("x-") || FORWARDING_HEADERS.contains(&name.as_str()) {
        return Err(serde::de::Error::custom(format!(
            "`{s}`: label headers must start with `x-` and must not be a forwarding header"
        )));
    }
    Ok(name)
}

/// The label prefix: client headers starting with it are removed, so it
/// must be specific (`x-` and at least two more characters) and must not
/// cover a forwarding header.
fn label_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?.to_ascii_lowercase();
    let usable = s.len() >= 4
        && s.starts_with("x-")
        && HeaderName::from_bytes(s.as_bytes()).is_ok()
        && !FORWARDING_HEADERS.iter().any(|h| h.starts_with(s.as_str()));
    if !usable {
        return Err(serde::de::Error::custom(format!(
            "`{s}` is not a usable label prefix: it must start with `x-`, have at least \
             four characters, and not cover a forwarding header such as x-forwarded-for"
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "usher.toml").unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "usher.toml").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.upstream.to_string(), "http://127.0.0.1:3000");
        assert_eq!(c.access_log, AccessLog::Stdout);
        assert_eq!(c.labels.class, "x-usher-class");
        assert_eq!(c.timeouts.connect, Duration::from_secs(2));
    }

    #[test]
    fn shipped_usher_toml_documents_the_defaults() {
        let mut shipped = Config::parse(include_str!("../../usher.toml"), "usher.toml").unwrap();
        shipped.origin = Config::default().origin;
        // The one deliberate difference: the shipped file loads the
        // shipped rules.
        assert_eq!(shipped.rules, ["rules/*.toml"]);
        shipped.rules = Vec::new();
        assert_eq!(format!("{shipped:?}"), format!("{:?}", Config::default()));
    }

    /// The keys serde knows for the top level or a table, read from the
    /// "unknown field, expected one of …" error.
    fn known_keys(table: Option<&str>) -> Vec<String> {
        let probe = match table {
            None => "zz_unknown = 1".to_owned(),
            Some(t) => format!("[{t}]\nzz_unknown = 1"),
        };
        let e = err(&probe);
        e.split('`').skip(5).step_by(2).map(str::to_owned).collect()
    }

    #[test]
    fn shipped_usher_toml_names_every_key() {
        let shipped: toml::Table = include_str!("../../usher.toml").parse().unwrap();
        let top = known_keys(None);
        assert!(top.contains(&"listen".to_owned()), "{top:?}");
        for key in &top {
            assert!(
                shipped.contains_key(key),
                "usher.toml does not document `{key}`"
            );
        }
        let text = include_str!("../../usher.toml");
        // Arrays of tables are documented as a commented example.
        let commented = |key: &str| {
            text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[[identity.{key}]]"))
                    || l.starts_with(&format!("[identity.{key}]"))
            })
        };
        for table in ["labels", "timeouts", "connections", "identity", "state"] {
            let documented = shipped[table].as_table().unwrap();
            for key in known_keys(Some(table)) {
                assert!(
                    documented.contains_key(&key) || commented(&key),
                    "usher.toml does not document `{table}.{key}`"
                );
            }
        }
        for (probe, table) in [
            ("[identity.jwt]", "jwt"),
            ("identity.api_keys", "api_keys"),
            ("identity.session", "session"),
        ] {
            let keys = known_keys(Some(probe));
            assert!(keys.len() > 2, "{keys:?}");
            for key in keys {
                assert!(
                    commented(&key),
                    "usher.toml does not document `identity.{table}.{key}`"
                );
            }
        }
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
listen = "0.0.0.0:8081"
upstream = "http://app.internal:3000/"
admin = "127.0.0.1:9191"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]
client_ip_header = "forwarded"
access_log = "off"
rules = []
[labels]
prefix = "X-Bot-"
class = "X-Bot-Class"
[timeouts]
header_read = "5s"
connect = "250ms"
response_header = "1.5s"
upstream_idle = "2m"
shutdown = "1h"
[identity]
[state]
"#,
            "usher.toml",
        )
        .unwrap();
        assert_eq!(c.upstream.to_string(), "http://app.internal:3000");
        assert_eq!(c.labels.prefix, "x-bot-");
        assert_eq!(c.labels.class, "x-bot-class");
        assert_eq!(c.client_ip_header, ClientIpHeader::Forwarded);
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.response_header, Duration::from_millis(1500));
        assert_eq!(c.timeouts.shutdown, Duration::from_secs(3600));
        assert!(c.trusted_proxies().trusts(&"192.168.1.1".parse().unwrap()));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("listen = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert!(e.starts_with("usher.toml:2:1:"), "{e}");
        assert!(e.contains("listen_port"), "{e}");
        let e = err("[timeouts]\nconect = \"1s\"\n");
        assert!(e.starts_with("usher.toml:2:1:"), "{e}");
        assert!(e.contains("conect"), "{e}");
    }

    #[test]
    fn invalid_values_name_key_and_line() {
        for (text, key, line) in [
            ("listen = \"nope\"", "listen", 1),
            ("\nupstream = \"ftp://x\"", "upstream", 2),
            (
                "trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/99\"]",
                "trusted_proxies",
                1,
            ),
            ("[timeouts]\n\nconnect = \"soon\"", "timeouts.connect", 3),
            ("[timeouts]\nconnect = \"0s\"", "timeouts.connect", 2),
            ("[labels]\nclass = \"bad header\"", "labels.class", 2),
            ("[labels]\nsubject = \"authorization\"", "labels.subject", 2),
            ("[labels]\nclass = \"x-real-ip\"", "labels.class", 2),
            ("[labels]\nprefix = \"co\"", "labels.prefix", 2),
            ("[labels]\nprefix = \"x-\"", "labels.prefix", 2),
            ("[labels]\nprefix = \"x-forw\"", "labels.prefix", 2),
            ("access_log = \"syslog\"", "access_log", 1),
            ("client_ip_header = \"x-real-ip\"", "client_ip_header", 1),
            ("listen = 8080", "listen", 1),
            ("[connections]\nmax = 0", "connections.max", 2),
            (
                "[connections]\nmax_header_bytes = 100",
                "connections.max_header_bytes",
                2,
            ),
            (
                "[connections]\nmax_headers = 5000",
                "connections.max_headers",
                2,
            ),
            (
                "[connections]\nh2_max_streams = -1",
                "connections.h2_max_streams",
                2,
            ),
            ("[connections]\nmax_body = 1", "connections", 2),
            ("[state]\nbackend = \"etcd\"", "state.backend", 2),
            ("[state]\nurl = \"http://redis:6379\"", "state.url", 2),
            ("[state]\nurl = \"redis://h:notaport\"", "state.url", 2),
            ("[state]\ncluster = []", "state.cluster", 2),
            (
                "[state]\ncluster = [\"redis://a:1\", \"http://b:2\"]",
                "cluster[1]",
                2,
            ),
            (
                "[state]\ncluster = [\"redis://a:1\", \"rediss://b:2\"]",
                "all rediss",
                2,
            ),
            ("[state]\ncluster = \"redis://a:1\"", "state.cluster", 2),
            ("[state]\ncluster = 5", "state.cluster", 2),
            ("[state]\nkey_prefix = \"a b\"", "state.key_prefix", 2),
            ("[state]\nkey_prefix = \"{x}\"", "state.key_prefix", 2),
            ("[state]\nsync_interval = \"5s\"", "state.sync_interval", 2),
            ("[state]\nverdict_ttl = \"0s\"", "state.verdict_ttl", 2),
        ] {
            let e = err(text);
            assert!(e.starts_with(&format!("usher.toml:{line}:")), "{text}: {e}");
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn redis_backend_needs_a_url_and_keeps_its_password_out_of_errors() {
        let e = err("[state]\nbackend = \"redis\"\n");
        assert!(e.contains("needs `url`"), "{e}");
        let e = err("[state]\nbackend = \"redis\"\nurl = \"redis://:s3cret@h:badport/\"\n");
        assert!(e.contains("state.url") && !e.contains("s3cret"), "{e}");
        let c = Config::parse(
            "[state]\nbackend = \"redis\"\nurl = \"rediss://:pw@redis.internal:6380/2\"\n",
            "usher.toml",
        )
        .unwrap();
        let shared = c
            .state
            .shared(Path::new("."), "usher.toml")
            .unwrap()
            .unwrap();
        assert_eq!(shared.sync_interval, Duration::from_millis(100));
        assert_eq!(shared.key_prefix, "usher:");
        assert!(
            Config::default()
                .state
                .shared(Path::new("."), "usher.toml")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn redis_is_one_server_or_a_cluster_with_tls_checked_at_load() {
        use crate::state::redis_link::Servers;
        let lone = err("[state]\ncluster = \"redis://:hunter2@a:1\"\n");
        assert!(lone.contains("list") && !lone.contains("hunter2"), "{lone}");
        let both =
            "[state]\nbackend = \"redis\"\nurl = \"redis://a:1\"\ncluster = [\"redis://b:1\"]\n";
        assert!(err(both).contains("not both"), "{}", err(both));
        let plain_ca = "[state]\nbackend = \"redis\"\nurl = \"redis://a:1\"\ntls_ca = \"ca.pem\"\n";
        assert!(err(plain_ca).contains("tls_ca"), "{}", err(plain_ca));

        let c = Config::parse(
            "[state]\nbackend = \"redis\"\ncluster = [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]\n",
            "usher.toml",
        )
        .unwrap();
        let shared = c
            .state
            .shared(Path::new("."), "usher.toml")
            .unwrap()
            .unwrap();
        assert_eq!(
            shared.servers,
            Servers::Cluster(vec![
                "redis://10.0.0.1:6379".into(),
                "redis://10.0.0.2:6379".into()
            ])
        );

        // The CA is read from beside the config file, and must be PEM.
        let dir = tempfile::tempdir().unwrap();
        let tls = "[state]\nbackend = \"redis\"\nurl = \"rediss://h:6380\"\ntls_ca = \"ca.pem\"\n";
        let c = Config::parse(tls, "usher.toml").unwrap();
        let missing = c
            .state
            .shared(dir.path(), "usher.toml")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("ca.pem") && missing.contains("state.tls_ca"),
            "{missing}"
        );
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let bad = c
            .state
            .shared(dir.path(), "usher.toml")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("ca.pem") && bad.contains("state.tls_ca"),
            "{bad}"
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("listen = \"127.0.0.1:1\"\n[timeouts\n");
        assert!(e.starts_with("usher.toml:2:"), "{e}");
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let e = err("listen = \"127.0.0.1:7000\"\nadmin = \"127.0.0.1:7000\"");
        assert!(e.contains("must differ"), "{e}");
        let e = err("[labels]\nscore = \"x-usher-class\"");
        assert!(e.contains("two labels"), "{e}");
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncé=", 6), (2, 3));
        assert_eq!(line_column("ab\ncé=", 5), (2, 2), "inside a character");
        assert_eq!(line_column("", 10), (1, 1));
    }
}
