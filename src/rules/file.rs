//! Rule files: TOML documents of `[[rule]]` tables (and at most one
//! `[thresholds]`), loaded from the config's `rules` globs in file-name
//! order and compiled once. Every error names its file, line and column.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use http::{HeaderName, Method};
use regex::bytes::{
    Regex as BytesRegex, RegexSet as BytesRegexSet, RegexSetBuilder as BytesRegexSetBuilder,
};
use regex::{Regex, RegexSet, RegexSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::condition::{Comparison, Condition, IdentityKind, SignalName};
use super::netset::NetSet;
use super::{Effect, Mode, Rule, RuleSet};
use crate::config::{ConfigError, OneOrMany, Origin, parse_toml};
use crate::crawlers::dns::Suffix;
use crate::crawlers::{Crawler, Definitions, Status};
use crate::forwarded::Cidr;
use crate::limits::Rate;
use crate::verdict::{Action, Class};

/// Rule files larger than this are refused.
pub const MAX_FILE: u64 = 4 << 20;

/// Address list files larger than this are refused.
pub const MAX_LIST: u64 = 16 << 20;

/// Compiled regexes may not grow beyond this (per condition).
const REGEX_SIZE_LIMIT: usize = 32 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    thresholds: Option<Spanned<Thresholds>>,
    #[serde(default)]
    limits: Option<Spanned<HashMap<Class, Spanned<LimitDef>>>>,
    #[serde(default)]
    rule: Vec<RuleDef>,
    #[serde(default)]
    crawler: Vec<CrawlerDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrawlerDef {
    name: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    user_agent: Spanned<OneOrMany<String>>,
    #[serde(default)]
    ranges: Strings,
    #[serde(default)]
    ranges_file: Option<Spanned<OneOrMany<String>>>,
    #[serde(default)]
    rdns: Strings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Thresholds {
    #[serde(default)]
    bot: Option<i32>,
    #[serde(default)]
    action: HashMap<Class, Action>,
    #[serde(default, deserialize_with = "tarpit_delay")]
    tarpit: Option<std::time::Duration>,
}

/// How long the tarpit holds a request: at most a minute.
fn tarpit_delay<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let s = String::deserialize(d)?;
    let delay = crate::config::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if delay > std::time::Duration::from_secs(60) {
        return Err(serde::de::Error::custom(
            "the tarpit holds a request at most \"60s\"",
        ));
    }
    Ok(Some(delay))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitDef {
    rate: String,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    name: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    when: Option<When>,
    #[serde(default)]
    score: i32,
    #[serde(default)]
    class: Option<Class>,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
}

type Strings = Option<Spanned<OneOrMany<String>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct When {
    #[serde(default)]
    method: Strings,
    #[serde(default)]
    path: Strings,
    #[serde(default)]
    path_prefix: Strings,
    #[serde(default)]
    query: Strings,
    #[serde(default)]
    host: Strings,
    #[serde(default)]
    header_present: Strings,
    #[serde(default)]
    header_absent: Strings,
    #[serde(default)]
    header: Option<Spanned<HeaderMatch>>,
    #[serde(default)]
    any_header: Option<Spanned<String>>,
    #[serde(default)]
    path_escapes_root: Option<bool>,
    #[serde(default)]
    user_agent: Strings,
    #[serde(default)]
    user_agent_contains: Strings,
    #[serde(default)]
    user_agent_missing: Option<bool>,
    #[serde(default)]
    ip: Strings,
    #[serde(default)]
    ip_file: Option<Spanned<String>>,
    #[serde(default)]
    identity: Strings,
    #[serde(default)]
    class: Option<OneOrMany<Class>>,
    #[serde(default)]
    signal: Option<Spanned<SignalDef>>,
    #[serde(default)]
    crawler: Strings,
    #[serde(default)]
    claim: Option<crate::config::identity::ClaimMatch>,
    #[serde(default)]
    all: Option<Vec<When>>,
    #[serde(default)]
    any: Option<Vec<When>>,
    #[serde(default)]
    not: Option<Box<When>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMatch {
    name: String,
    matches: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalDef {
    name: String,
    #[serde(default)]
    gt: Option<f64>,
    #[serde(default)]
    ge: Option<f64>,
    #[serde(default)]
    lt: Option<f64>,
    #[serde(default)]
    le: Option<f64>,
}

/// An error at a place in one file.
struct Located {
    span: Option<Range<usize>>,
    message: String,
}

fn at<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Located> {
    Err(Located {
        span: Some(span),
        message: message.into(),
    })
}

/// Everything the rule files define.
#[derive(Debug)]
pub struct Loaded {
    /// The rules, thresholds and actions.
    pub rules: RuleSet,
    /// Per-class quotas (at most one file sets `[limits]`).
    pub limits: Vec<(Class, Rate)>,
    /// The crawlers whose claims are verified.
    pub crawlers: Definitions,
    /// Every file read: the rule files and the address lists they name.
    pub files: Vec<PathBuf>,
}

/// Load and compile the rule files named by `globs` (relative to `base`).
pub fn load(globs: &[String], base: &Path) -> Result<RuleSet, ConfigError> {
    load_all(globs, base).map(|loaded| loaded.rules)
}

/// Load the rule files with the quotas and crawlers they define.
pub fn load_all(globs: &[String], base: &Path) -> Result<Loaded, ConfigError> {
    let files = expand(globs, base)?;
    let mut files_read: Vec<PathBuf> = files.clone();
    let mut crawlers = Definitions::default();
    let mut agent_patterns: Vec<String> = Vec::new();
    let mut limits: Vec<(Class, Rate)> = Vec::new();
    let mut limits_from: Option<PathBuf> = None;
    let mut rules: Vec<Rule> = Vec::new();
    let mut bot_threshold = RuleSet::DEFAULT_BOT_THRESHOLD;
    let mut class_actions: Vec<(Class, Action)> = Vec::new();
    let mut tarpit = None;
    let mut names: HashMap<Arc<str>, PathBuf> = HashMap::new();
    let mut thresholds_from: Option<PathBuf> = None;
    for path in files {
        let origin = read(&path)?;
        let file: RuleFile = parse_toml(&origin.text, &origin.file)?;
        let locate = |e: Located| origin.error_at(e.span, e.message);
        if let Some(t) = file.thresholds {
            if let Some(first) = &thresholds_from {
                return Err(locate(Located {
                    span: Some(t.span()),
                    message: format!(
                        "thresholds are already set in {}; set them in one file",
                        first.display()
                    ),
                }));
            }
            thresholds_from = Some(path.clone());
            let t = t.into_inner();
            bot_threshold = t.bot.unwrap_or(bot_threshold);
            if bot_threshold <= 0 {
                return Err(origin.error_at(
                    None,
                    "thresholds.bot must be positive (at 0 every request would be malicious_bot)"
                        .to_owned(),
                ));
            }
            tarpit = t.tarpit;
            class_actions.extend(t.action);
        }
        if let Some(l) = file.limits {
            let span = l.span();
            if let Some(first) = &limits_from {
                return Err(locate(Located {
                    span: Some(span),
                    message: format!(
                        "limits are already set in {}; set them in one file",
                        first.display()
                    ),
                }));
            }
            limits_from = Some(path.clone());
            for (class, def) in l.into_inner() {
                let at = def.span();
                let def = def.into_inner();
                let rate = Rate::parse(&def.rate, def.burst).map_err(|message| {
                    locate(Located {
                        span: Some(at),
                        message: format!("limits.{class}: {message}"),
                    })
                })?;
                limits.push((class, rate));
            }
        }
        for def in &file.rule {
            if let Some(when) = &def.when {
                address_lists(when, &origin.dir, &mut files_read);
            }
        }
        for def in &file.crawler {
            let lists = def.ranges_file.as_ref().map(|f| f.get_ref().clone());
            let lists = lists.map(OneOrMany::into_vec).unwrap_or_default();
            files_read.extend(lists.iter().map(|f| origin.dir.join(f)));
        }
        for def in file.rule {
            let name_span = def.name.span();
            let rule = compile_rule(def, &origin.dir).map_err(locate)?;
            if let Some(first) = names.get(&rule.name) {
                return Err(origin.error_at(
                    Some(name_span),
                    format!(
                        "rule `{}` is already defined in {}; names must be unique",
                        rule.name,
                        first.display()
                    ),
                ));
            }
            names.insert(rule.name.clone(), path.clone());
            rules.push(rule);
        }
        for def in file.crawler {
            let name_span = def.name.span();
            let (crawler, patterns) = compile_crawler(def, &origin.dir).map_err(locate)?;
            if let Some(first) = crawlers.list.iter().find(|c| c.name == crawler.name) {
                return Err(origin.error_at(
                    Some(name_span),
                    format!(
                        "crawler `{}` is already defined; names must be unique",
                        first.name
                    ),
                ));
            }
            let Ok(index) = u16::try_from(crawlers.list.len()) else {
                return Err(origin.error_at(Some(name_span), "too many crawlers".to_owned()));
            };
            crawlers.owner.extend(patterns.iter().map(|_| index));
            agent_patterns.extend(patterns);
            crawlers.list.push(crawler);
        }
    }
    if !agent_patterns.is_empty() {
        let set = BytesRegexSetBuilder::new(&agent_patterns)
            .unicode(false)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| ConfigError::Inconsistent {
                file: base.display().to_string(),
                message: format!("crawler user agents: {e}"),
            })?;
        crawlers.agents = Some(set);
    }
    if let Some((class, _)) = class_actions
        .iter()
        .find(|(class, action)| *action == Action::Limit && !limits.iter().any(|(c, _)| c == class))
    {
        return Err(ConfigError::Inconsistent {
            file: thresholds_from
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
            message: format!(
                "thresholds.action.{class} is `limit`, but [limits] gives {class} no quota"
            ),
        });
    }
    let mut rules = class_actions.into_iter().fold(
        RuleSet::new(rules, bot_threshold),
        |set, (class, action)| set.with_class_action(class, action),
    );
    if let Some(delay) = tarpit {
        rules = rules.with_tarpit_delay(delay);
    }
    Ok(Loaded {
        rules,
        limits,
        crawlers,
        files: files_read,
    })
}

/// The address lists (`ip_file`) a condition names, at any depth.
fn address_lists(when: &When, dir: &Path, out: &mut Vec<PathBuf>) {
    if let Some(f) = &when.ip_file {
        out.push(dir.join(f.get_ref()));
    }
    let nested = when.all.iter().chain(&when.any).flatten();
    for inner in nested.chain(when.not.as_deref()) {
        address_lists(inner, dir, out);
    }
}

/// The rule files the globs name now, in load order (relative to `base`).
pub fn rule_files(globs: &[String], base: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    expand(globs, base)
}

/// A crawler definition and its user-agent patterns.
fn compile_crawler(def: CrawlerDef, dir: &Path) -> Result<(Crawler, Vec<String>), Located> {
    let name_span = def.name.span();
    let name = def.name.into_inner();
    if name.is_empty() {
        return at(name_span, "a crawler needs a name");
    }
    let (span, patterns) = strings(def.user_agent)?;
    bytes_regex_set(&patterns, span)?;
    let mut nets = Vec::new();
    if let Some(v) = def.ranges {
        let (span, list) = strings(v)?;
        for item in &list {
            nets.push(item.parse::<Cidr>().or_else(|e| at(span.clone(), e))?);
        }
    }
    if let Some(files) = def.ranges_file {
        let span = files.span();
        for f in files.into_inner().into_vec() {
            nets.extend(ip_list(&dir.join(f)).or_else(|e| at(span.clone(), e))?);
        }
    }
    let mut rdns = Vec::new();
    if let Some(v) = def.rdns {
        let (span, list) = strings(v)?;
        for suffix in &list {
            rdns.push(Suffix::parse(suffix).or_else(|e| at(span.clone(), e))?);
        }
    }
    if nets.is_empty() && rdns.is_empty() {
        return at(
            name_span,
            format!(
                "crawler `{name}` has no `ranges`, `ranges_file` or `rdns`, so no claim could ever be verified"
            ),
        );
    }
    Ok((
        Crawler {
            name: Arc::from(name),
            ranges: NetSet::new(&nets),
            rdns: Arc::from(rdns),
        },
        patterns,
    ))
}

fn read(path: &Path) -> Result<Origin, ConfigError> {
    let file = path.display().to_string();
    let io = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE {
        return Err(ConfigError::Inconsistent {
            file,
            message: format!("rule files may be at most {} MiB", MAX_FILE >> 20),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    Ok(Origin {
        file,
        dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
        text: Arc::from(text),
    })
}

/// The files the globs name, each glob's matches in name order. Only the
/// last path component may hold `*` or `?`.
fn expand(globs: &[String], base: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for glob in globs {
        let path = base.join(glob);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let mut matched = if name.contains(['*', '?']) {
            let dir = path.parent().unwrap_or(Path::new("."));
            let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
                path: dir.to_owned(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
                .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(&name, n)))
                .map(|e| e.path())
                .collect();
            found.sort();
            found
        } else {
            vec![path.clone()]
        };
        if matched.is_empty() {
            return Err(ConfigError::Inconsistent {
                file: glob.clone(),
                message: "`rules`: this pattern matches no file".to_owned(),
            });
        }
        matched.retain(|p| !files.contains(p));
        files.extend(matched);
    }
    Ok(files)
}

/// Shell-style match of `*` (any run) and `?` (one character).
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn compile_rule(def: RuleDef, dir: &Path) -> Result<Rule, Located> {
    let name_span = def.name.span();
    let name = def.name.into_inner();
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !valid_name {
        return at(
            name_span,
            format!("rule name `{name}`: use 1-64 letters, digits, `-`, `_`, `.` or `:`"),
        );
    }
    let mode = match def.mode {
        None => Mode::Enforce,
        Some(m) => match m.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "shadow" => Mode::Shadow,
            other => {
                return at(
                    m.span(),
                    format!("rule `{name}`: mode `{other}`, expected `enforce` or `shadow`"),
                );
            }
        },
    };
    let when = match def.when {
        None => Condition::Always,
        Some(when) => compile_when(when, dir).map_err(|e| Located {
            message: format!("rule `{name}`: {}", e.message),
            ..e
        })?,
    };
    if def.score == 0 && def.class.is_none() && def.action.is_none() {
        return at(
            name_span,
            format!("rule `{name}` has no effect: give it a score, a class or an action"),
        );
    }
    Ok(Rule {
        name: Arc::from(name),
        when,
        effect: Effect {
            score: def.score,
            class: def.class,
            action: def.action,
        },
        mode,
    })
}

fn strings(value: Spanned<OneOrMany<String>>) -> Result<(Range<usize>, Vec<String>), Located> {
    let span = value.span();
    let list = value.into_inner().into_vec();
    if list.is_empty() {
        return at(
            span,
            "an empty list never matches; remove the condition instead",
        );
    }
    Ok((span, list))
}

fn compile_when(when: When, dir: &Path) -> Result<Condition, Located> {
    let mut all: Vec<Condition> = Vec::new();
    if let Some(v) = when.method {
        let (span, list) = strings(v)?;
        let mut methods = Vec::with_capacity(list.len());
        for m in list {
            match Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(method),
                _ => return at(span, format!("`{m}` is not an upper-case method name")),
            }
        }
        all.push(Condition::Method(methods));
    }
    if let Some(v) = when.path {
        let (span, list) = strings(v)?;
        all.push(Condition::Path(regex_set(&list, span)?));
    }
    if let Some(v) = when.path_prefix {
        let (span, list) = strings(v)?;
        if list.iter().any(|p| !p.starts_with('/')) {
            return at(span, "path prefixes start with `/`");
        }
        all.push(Condition::PathPrefix(list));
    }
    if let Some(v) = when.query {
        let (span, list) = strings(v)?;
        all.push(Condition::Query(bytes_regex_set(&list, span)?));
    }
    if let Some(v) = when.host {
        let (_, list) = strings(v)?;
        all.push(Condition::Host(
            list.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        ));
    }
    if let Some(v) = when.header_present {
        let (span, list) = strings(v)?;
        all.push(Condition::HeaderPresent(header_names(&list, span)?));
    }
    if let Some(v) = when.header_absent {
        let (span, list) = strings(v)?;
        all.push(Condition::HeaderAbsent(header_names(&list, span)?));
    }
    if let Some(h) = when.header {
        let span = h.span();
        let h = h.into_inner();
        let name = header_names(std::slice::from_ref(&h.name), span.clone())?.remove(0);
        let regex = bytes_regex(&h.matches, span)?;
        all.push(Condition::Header(name, regex));
    }
    if let Some(r) = when.any_header {
        let span = r.span();
        all.push(Condition::AnyHeader(bytes_regex(r.get_ref(), span)?));
    }
    match when.path_escapes_root {
        Some(true) => all.push(Condition::PathEscapesRoot),
        Some(false) => all.push(Condition::Not(Box::new(Condition::PathEscapesRoot))),
        None => {}
    }
    if let Some(v) = when.user_agent {
        let (span, list) = strings(v)?;
        all.push(Condition::UserAgent(bytes_regex_set(&list, span)?));
    }
    if let Some(v) = when.user_agent_contains {
        let (span, list) = strings(v)?;
        if list.iter().any(String::is_empty) {
            return at(span, "empty strings would match every user agent");
        }
        let ac: AhoCorasick = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .build(&list)
            .map_err(|e| Located {
                span: Some(span),
                message: format!("cannot build the literal matcher: {e}"),
            })?;
        all.push(Condition::UserAgentContains(ac));
    }
    match when.user_agent_missing {
        Some(true) => all.push(Condition::UserAgentMissing),
        Some(false) => all.push(Condition::Not(Box::new(Condition::UserAgentMissing))),
        None => {}
    }
    if let Some(v) = when.ip {
        let (span, list) = strings(v)?;
        let mut nets = Vec::with_capacity(list.len());
        for item in &list {
            nets.push(item.parse::<Cidr>().or_else(|e| at(span.clone(), e))?);
        }
        all.push(Condition::Ip(NetSet::new(&nets)));
    }
    if let Some(f) = when.ip_file {
        let span = f.span();
        let nets = ip_list(&dir.join(f.get_ref())).or_else(|e| at(span, e))?;
        all.push(Condition::Ip(NetSet::new(&nets)));
    }
    if let Some(v) = when.identity {
        let (span, list) = strings(v)?;
        let mut kinds = Vec::new();
        for k in &list {
            match IdentityKind::parse(k) {
                Some(kind) => kinds.push(kind),
                None => {
                    return at(
                        span,
                        format!(
                            "identity `{k}`, expected anonymous, user, service, invalid or unverified"
                        ),
                    );
                }
            }
        }
        all.push(Condition::Identity(kinds));
    }
    if let Some(classes) = when.class {
        all.push(Condition::IdentityClass(classes.into_vec()));
    }
    if let Some(v) = when.crawler {
        let (span, list) = strings(v)?;
        let mut statuses = Vec::new();
        for s in &list {
            match Status::parse(s) {
                Some(status) => statuses.push(status),
                None => {
                    return at(
                        span,
                        format!("crawler `{s}`, expected verified, spoofed, unknown or none"),
                    );
                }
            }
        }
        all.push(Condition::Crawler(statuses));
    }
    if let Some(m) = when.claim {
        all.push(Condition::Claim(m));
    }
    if let Some(s) = when.signal {
        let span = s.span();
        let s = s.into_inner();
        let Some(name) = SignalName::parse(&s.name) else {
            return at(
                span,
                format!(
                    "unknown signal `{}`, expected one of {}",
                    s.name,
                    SignalName::NAMES.join(", ")
                ),
            );
        };
        let cmp = match (s.gt, s.ge, s.lt, s.le) {
            (Some(x), None, None, None) => Comparison::Gt(x),
            (None, Some(x), None, None) => Comparison::Ge(x),
            (None, None, Some(x), None) => Comparison::Lt(x),
            (None, None, None, Some(x)) => Comparison::Le(x),
            _ => return at(span, "give exactly one of gt, ge, lt or le"),
        };
        all.push(Condition::Signal(name, cmp));
    }
    for (list, any) in [(when.all, false), (when.any, true)] {
        if let Some(list) = list {
            let compiled = list
                .into_iter()
                .map(|w| compile_when(w, dir))
                .collect::<Result<Vec<_>, _>>()?;
            all.push(if any {
                Condition::Any(compiled)
            } else {
                Condition::All(compiled)
            });
        }
    }
    if let Some(not) = when.not {
        all.push(Condition::Not(Box::new(compile_when(*not, dir)?)));
    }
    Ok(match all.len() {
        0 => Condition::Always,
        1 => all.remove(0),
        _ => Condition::All(all),
    })
}

fn regex_set(patterns: &[String], span: Range<usize>) -> Result<RegexSet, Located> {
    check_patterns(patterns, span.clone())?;
    RegexSetBuilder::new(patterns)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Located {
            span: Some(span),
            message: format!("invalid regex: {e}"),
        })
}

/// One regex matched against bytes (header values may be any bytes).
fn bytes_regex(pattern: &str, span: Range<usize>) -> Result<BytesRegex, Located> {
    if Regex::new(pattern).is_ok_and(|r| r.is_match("")) {
        return at(
            span,
            format!("regex `{pattern}` matches the empty string, so it would match everything"),
        );
    }
    regex::bytes::RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Located {
            span: Some(span),
            message: format!("invalid regex: {e}"),
        })
}

/// Regexes matched against bytes, as one set. ASCII classes (`\w`, `\b`,
/// `(?i)`) unless a pattern opts in with `(?u)`: Unicode word boundaries
/// on hostile non-ASCII input fall back to a slow engine, and a client
/// chooses the bytes.
fn bytes_regex_set(patterns: &[String], span: Range<usize>) -> Result<BytesRegexSet, Located> {
    check_patterns(patterns, span.clone())?;
    BytesRegexSetBuilder::new(patterns)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Located {
            span: Some(span),
            message: format!("invalid regex: {e}"),
        })
}

/// Refuse empty lists and regexes that match the empty string.
fn check_patterns(patterns: &[String], span: Range<usize>) -> Result<(), Located> {
    if patterns.is_empty() {
        return at(
            span,
            "an empty list never matches; remove the condition instead",
        );
    }
    for p in patterns {
        if Regex::new(p).is_ok_and(|r| r.is_match("")) {
            return at(
                span,
                format!("regex `{p}` matches the empty string, so it would match everything"),
            );
        }
    }
    Ok(())
}

fn header_names(names: &[String], span: Range<usize>) -> Result<Vec<HeaderName>, Located> {
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes())
                .or_else(|_| at(span.clone(), format!("`{n}` is not a header name")))
        })
        .collect()
}

/// An address list: one CIDR or address per line; `#` starts a comment.
fn ip_list(path: &Path) -> Result<Vec<Cidr>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if size > MAX_LIST {
        return Err(format!(
            "{}: address lists may be at most {} MiB",
            path.display(),
            MAX_LIST >> 20
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut nets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        nets.push(
            line.parse::<Cidr>()
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?,
        );
    }
    Ok(nets)
}

#[cfg(test)]
mod tests;
