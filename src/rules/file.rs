//! Rule files: TOML documents of `[[rule]]` tables (and at most one
//! `[thresholds]`), loaded from the config's `rules` globs in file-name
//! order and compiled once. Every error names its file, line and column,
//! and the rule; loading goes on past a broken rule, crawler or file so
//! that all errors are reported at once, with warnings about rules that
//! are valid but cannot do what they seem to (see `Analysis`).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderName, Method};
use regex::bytes::{
    Regex as BytesRegex, RegexSet as BytesRegexSet, RegexSetBuilder as BytesRegexSetBuilder,
};
use regex::{RegexSet, RegexSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::condition::{Comparison, Condition, IdentityKind, SignalName};
use super::netset::NetSet;
use super::screen::Screened;
use super::{Effect, Mode, Rule, RuleSet};
use crate::config::bounded_read;
use crate::config::{
    ConfigError, Diagnostic, Diagnostics, OneOrMany, Origin, Severity, parse_toml_value,
};
use crate::crawlers::dns::Suffix;
use crate::crawlers::{Crawler, Definitions, Status};
use crate::forwarded::Cidr;
use crate::limits::Rate;
use crate::verdict::{Action, Class};
use analysis::{Analysis, Seen, always, canonical, reads_crawler, warning_at};

/// Rule files larger than this are refused.
pub const MAX_FILE: u64 = 4 << 20;

/// Address list files larger than this are refused.
pub const MAX_LIST: u64 = 16 << 20;

/// Compiled regexes may not grow beyond this (per condition).
const REGEX_SIZE_LIMIT: usize = 32 << 20;

/// The tables a rule file may hold.
const SECTIONS: [&str; 4] = ["thresholds", "limits", "rule", "crawler"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrawlerDef {
    name: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    user_agent: Spanned<Items>,
    #[serde(default)]
    ranges: Option<Spanned<Items>>,
    #[serde(default)]
    ranges_file: Option<Spanned<OneOrMany<String>>>,
    #[serde(default)]
    rdns: Strings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Thresholds {
    #[serde(default)]
    bot: Option<Spanned<i32>>,
    #[serde(default)]
    action: HashMap<Class, Spanned<Action>>,
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

type Strings = Option<Spanned<Items>>;

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
    ip: Option<Spanned<Items>>,
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
    any: Option<Spanned<Vec<When>>>,
    #[serde(default)]
    not: Option<Spanned<Box<When>>>,
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

/// One string or a list of them, each with its own span where the list
/// gives one (an element's span is more precise than the list's).
#[derive(Debug)]
struct Items(Vec<(Option<Range<usize>>, String)>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Items;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Items, E> {
                Ok(Items(vec![(None, v.to_owned())]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Items, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    let span = item.span();
                    items.push((Some(span), item.into_inner()));
                }
                Ok(Items(items))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Items {
    /// The items, each with its span (the whole value's where it has none
    /// of its own). An empty list is an error: it would never match.
    fn spanned(value: Spanned<Items>) -> Result<Vec<(Range<usize>, String)>, Located> {
        let span = value.span();
        let items = value.into_inner().0;
        if items.is_empty() {
            return at(
                span,
                "an empty list never matches; remove the condition instead",
            );
        }
        Ok(items
            .into_iter()
            .map(|(own, item)| (own.unwrap_or_else(|| span.clone()), item))
            .collect())
    }
}

/// An error in the file being loaded, at a span of it; or errors found in
/// another file it names (an address list), reported there.
struct Located {
    span: Option<Range<usize>>,
    message: String,
    elsewhere: Vec<Diagnostic>,
}

fn at<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Located> {
    Err(Located {
        span: Some(span),
        message: message.into(),
        elsewhere: Vec::new(),
    })
}

/// Where compile functions report warnings: the file being loaded.
struct Notes<'a> {
    origin: &'a Origin,
    warnings: Vec<Diagnostic>,
}

impl Notes<'_> {
    fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(Diagnostic::at(
            Severity::Warning,
            self.origin,
            Some(span),
            None,
            message,
        ));
    }
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
    /// What is valid but probably not meant, in file and line order.
    pub warnings: Vec<Diagnostic>,
    /// Every file read: the rule files and the address lists they name.
    pub files: Vec<PathBuf>,
}

/// Load and compile the rule files named by `globs` (relative to `base`).
pub fn load(globs: &[String], base: &Path) -> Result<RuleSet, ConfigError> {
    load_all(globs, base).map(|loaded| loaded.rules)
}

/// Load the rule files with the quotas and crawlers they define, and the
/// warnings about them. On any error, the error is
/// [`ConfigError::Diagnostics`] with every error found (a file that is not
/// valid TOML stops at its first; otherwise each broken rule or crawler is
/// reported and the rest still checked) and the warnings.
pub fn load_all(globs: &[String], base: &Path) -> Result<Loaded, ConfigError> {
    let mut loader = Loader::default();
    for path in expand(globs, base, &mut loader.diagnostics) {
        loader.files.push(path.clone());
        loader.file(&path);
    }
    loader.finish(base)
}

/// Compile one rule file's text, as if read from `name` in the folder
/// `base` (where address lists it names are looked for): for fuzzing and
/// tests, which need no file.
pub fn load_text(text: &str, name: &str, base: &Path) -> Result<Loaded, ConfigError> {
    let mut loader = Loader::default();
    loader.text(Origin {
        file: name.to_owned(),
        dir: base.to_owned(),
        text: Arc::from(text),
    });
    loader.finish(base)
}

/// The name a raw `[[rule]]` or `[[crawler]]` table gives itself, if any.
fn raw_name(item: &Spanned<toml::de::DeValue<'_>>) -> String {
    raw_field(item, "name")
        .and_then(|v| v.get_ref().as_str())
        .unwrap_or_default()
        .to_owned()
}

fn raw_field<'a, 'i>(
    item: &'a Spanned<toml::de::DeValue<'i>>,
    key: &str,
) -> Option<&'a Spanned<toml::de::DeValue<'i>>> {
    item.get_ref()
        .as_table()?
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

/// The rule files' contents as they are loaded, and what was found wrong.
struct Loader {
    diagnostics: Diagnostics,
    crawlers: Definitions,
    agent_patterns: Vec<String>,
    limits: Vec<(Class, Rate)>,
    limits_from: Option<String>,
    rules: Vec<Rule>,
    seen: Vec<Seen>,
    analysis: Analysis,
    bot_threshold: i32,
    /// Each class's action, and where it is set (to report a `limit`
    /// without a quota there).
    class_actions: Vec<(Class, Action, Diagnostic)>,
    tarpit: Option<std::time::Duration>,
    /// Each rule name, and where it was first defined.
    names: HashMap<String, String>,
    thresholds_from: Option<String>,
    /// Every file read (to watch for reloads).
    files: Vec<PathBuf>,
}

impl Default for Loader {
    fn default() -> Self {
        Loader {
            diagnostics: Diagnostics::new(),
            crawlers: Definitions::default(),
            agent_patterns: Vec::new(),
            limits: Vec::new(),
            limits_from: None,
            rules: Vec::new(),
            seen: Vec::new(),
            analysis: Analysis::default(),
            bot_threshold: RuleSet::DEFAULT_BOT_THRESHOLD,
            class_actions: Vec::new(),
            tarpit: None,
            names: HashMap::new(),
            thresholds_from: None,
            files: Vec::new(),
        }
    }
}

impl Loader {
    fn error(
        &mut self,
        origin: &Origin,
        span: Option<Range<usize>>,
        rule: Option<&str>,
        message: impl Into<String>,
    ) {
        self.diagnostics
            .push(Diagnostic::at(Severity::Error, origin, span, rule, message));
    }

    /// Report a compile error of the rule named `rule` (or of a crawler,
    /// whose name is then in the message).
    fn located(&mut self, origin: &Origin, rule: Option<&str>, e: Located) {
        if e.elsewhere.is_empty() {
            self.error(origin, e.span, rule, e.message);
        } else {
            for d in e.elsewhere {
                let d = match rule {
                    Some(rule) => d.for_rule(rule),
                    None => d,
                };
                self.diagnostics.push(d);
            }
        }
    }

    /// Load one file; a file that cannot be read or parsed is reported and
    /// skipped, and a broken table in it is reported and the rest loaded.
    fn file(&mut self, path: &Path) {
        match read(path) {
            Ok(origin) => self.text(origin),
            Err(e) => self.diagnostics.absorb(e),
        }
    }

    /// Load one file's text.
    fn text(&mut self, origin: Origin) {
        let text = Arc::clone(&origin.text);
        let root = match toml::de::DeTable::parse(&text) {
            Ok(root) => root.into_inner(),
            Err(e) => {
                return self
                    .diagnostics
                    .absorb(crate::config::toml_error(&text, &origin.file, &e));
            }
        };
        let mut sections: [Option<Spanned<toml::de::DeValue<'_>>>; 4] = Default::default();
        for (key, value) in root {
            match SECTIONS.iter().position(|s| *s == key.get_ref().as_ref()) {
                Some(i) => sections[i] = Some(value),
                None => self.error(
                    &origin,
                    Some(key.span()),
                    None,
                    format!(
                        "unknown table `{}`, expected one of `thresholds`, `limits`, `rule`, `crawler`",
                        key.get_ref()
                    ),
                ),
            }
        }
        let [thresholds, limits, rules, crawlers] = sections;
        if let Some(t) = thresholds {
            self.thresholds(&origin, t);
        }
        if let Some(l) = limits {
            self.limits(&origin, l);
        }
        for item in self.tables(&origin, rules, "rule") {
            self.rule(&origin, item);
        }
        for item in self.tables(&origin, crawlers, "crawler") {
            self.crawler(&origin, item);
        }
    }

    /// The tables of an array of tables (`[[rule]]`).
    fn tables<'i>(
        &mut self,
        origin: &Origin,
        value: Option<Spanned<toml::de::DeValue<'i>>>,
        key: &str,
    ) -> Vec<Spanned<toml::de::DeValue<'i>>> {
        let Some(value) = value else {
            return Vec::new();
        };
        let span = value.span();
        match value.into_inner() {
            toml::de::DeValue::Array(items) if items.iter().all(|i| i.get_ref().is_table()) => {
                items.into_iter().collect()
            }
            _ => {
                self.error(
                    origin,
                    Some(span),
                    None,
                    format!("`{key}`: expected tables, written `[[{key}]]`"),
                );
                Vec::new()
            }
        }
    }

    fn thresholds(&mut self, origin: &Origin, value: Spanned<toml::de::DeValue<'_>>) {
        let span = value.span();
        let t: Thresholds = match parse_toml_value(value, &origin.text, &origin.file) {
            Ok(t) => t,
            Err(e) => return self.diagnostics.absorb(prefix(e, "thresholds")),
        };
        if let Some(first) = &self.thresholds_from {
            let message = format!("thresholds are already set in {first}; set them in one file");
            return self.error(origin, Some(span), None, message);
        }
        self.thresholds_from = Some(origin.file.clone());
        if let Some(bot) = t.bot {
            if *bot.get_ref() <= 0 {
                self.error(
                    origin,
                    Some(bot.span()),
                    None,
                    "thresholds.bot must be positive (at 0 every request would be malicious_bot)",
                );
            } else {
                self.bot_threshold = bot.into_inner();
            }
        }
        self.tarpit = t.tarpit;
        for (class, action) in t.action {
            let at = Diagnostic::at(Severity::Error, origin, Some(action.span()), None, "");
            self.class_actions.push((class, action.into_inner(), at));
        }
    }

    fn limits(&mut self, origin: &Origin, value: Spanned<toml::de::DeValue<'_>>) {
        let span = value.span();
        let l: HashMap<Class, Spanned<LimitDef>> =
            match parse_toml_value(value, &origin.text, &origin.file) {
                Ok(l) => l,
                Err(e) => return self.diagnostics.absorb(prefix(e, "limits")),
            };
        if let Some(first) = &self.limits_from {
            let message = format!("limits are already set in {first}; set them in one file");
            return self.error(origin, Some(span), None, message);
        }
        self.limits_from = Some(origin.file.clone());
        let mut l: Vec<_> = l.into_iter().collect();
        l.sort_by_key(|(_, def)| def.span().start);
        for (class, def) in l {
            let at = def.span();
            let def = def.into_inner();
            match Rate::parse(&def.rate, def.burst) {
                Ok(rate) => self.limits.push((class, rate)),
                Err(message) => {
                    self.error(origin, Some(at), None, format!("limits.{class}: {message}"));
                }
            }
        }
    }

    fn rule(&mut self, origin: &Origin, item: Spanned<toml::de::DeValue<'_>>) {
        let name = raw_name(&item);
        let when = match raw_field(&item, "when") {
            None => toml::Value::Table(toml::Table::new()),
            Some(w) => parse_toml_value::<toml::Value>(w.clone(), &origin.text, &origin.file)
                .unwrap_or_else(|_| toml::Value::Table(toml::Table::new())),
        };
        let def: RuleDef = match parse_toml_value(item, &origin.text, &origin.file) {
            Ok(def) => def,
            Err(e) if name.is_empty() => return self.diagnostics.absorb(prefix(e, "[[rule]]")),
            Err(e) => return self.diagnostics.push(Diagnostic::from(e).for_rule(&name)),
        };
        let name_span = def.name.span();
        let place_of = |span: Range<usize>| {
            let d = Diagnostic::at(Severity::Warning, origin, Some(span), Some(&name), "");
            (format!("{}:{}", d.file, d.line.unwrap_or(1)), d)
        };
        let (place, at) = place_of(name_span.clone());
        if let Some(first) = self.names.get(&name) {
            let message = format!("already defined at {first}; rule names must be unique");
            return self.error(origin, Some(name_span), Some(&name), message);
        }
        if !name.is_empty() {
            self.names.insert(name.clone(), place.clone());
        }
        if let Some(when) = &def.when {
            address_lists(when, &origin.dir, &mut self.files);
        }
        let mut notes = Notes {
            origin,
            warnings: Vec::new(),
        };
        let compiled = compile_rule(def, &mut notes);
        self.diagnostics
            .extend(notes.warnings.into_iter().map(|w| w.for_rule(&name)));
        let rule = match compiled {
            Ok(rule) => rule,
            Err(e) => return self.located(origin, Some(&name), e),
        };
        let seen = Seen {
            name: rule.name.clone(),
            place,
            at,
            when: canonical(&when),
            always: always(&rule.when),
            effect: rule.effect.clone(),
            mode: rule.mode,
            reads_crawler: reads_crawler(&rule.when),
        };
        let warnings = self.analysis.judge(&seen, &self.seen);
        self.diagnostics.extend(warnings);
        self.seen.push(seen);
        self.rules.push(rule);
    }

    fn crawler(&mut self, origin: &Origin, item: Spanned<toml::de::DeValue<'_>>) {
        let name = raw_name(&item);
        let def: CrawlerDef = match parse_toml_value(item, &origin.text, &origin.file) {
            Ok(def) => def,
            Err(e) => {
                let what = match name.as_str() {
                    "" => "[[crawler]]".to_owned(),
                    name => format!("crawler `{name}`"),
                };
                return self.diagnostics.absorb(prefix(e, &what));
            }
        };
        let name_span = def.name.span();
        if let Some(lists) = &def.ranges_file {
            let lists = lists.get_ref().clone().into_vec();
            self.files.extend(lists.iter().map(|f| origin.dir.join(f)));
        }
        let mut notes = Notes {
            origin,
            warnings: Vec::new(),
        };
        let compiled = compile_crawler(def, &mut notes);
        for w in &mut notes.warnings {
            w.message = format!("crawler `{name}`: {}", w.message);
        }
        self.diagnostics.extend(notes.warnings);
        let (crawler, patterns) = match compiled {
            Ok(compiled) => compiled,
            Err(mut e) => {
                e.message = format!("crawler `{name}`: {}", e.message);
                for d in &mut e.elsewhere {
                    d.message = format!("crawler `{name}`: {}", d.message);
                }
                return self.located(origin, None, e);
            }
        };
        if self.crawlers.list.iter().any(|c| c.name == crawler.name) {
            let message = format!("crawler `{name}` is already defined; names must be unique");
            return self.error(origin, Some(name_span), None, message);
        }
        let Ok(index) = u16::try_from(self.crawlers.list.len()) else {
            return self.error(origin, Some(name_span), None, "too many crawlers");
        };
        self.crawlers.owner.extend(patterns.iter().map(|_| index));
        self.agent_patterns.extend(patterns);
        self.crawlers.list.push(crawler);
    }

    /// Checks across files, then the result.
    fn finish(mut self, base: &Path) -> Result<Loaded, ConfigError> {
        if !self.agent_patterns.is_empty() {
            match BytesRegexSetBuilder::new(&self.agent_patterns)
                .unicode(false)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(set) => self.crawlers.agents = Some(crate::memo_set::MemoSet::new(set)),
                Err(e) => self.diagnostics.push(Diagnostic::file_error(
                    base.display().to_string(),
                    format!("crawler user agents: {e}"),
                )),
            }
        }
        let quota = |class: Class| self.limits.iter().any(|(c, _)| *c == class);
        for (class, action, at) in &self.class_actions {
            if *action == Action::Limit && !quota(*class) {
                self.diagnostics.push(Diagnostic {
                    message: format!(
                        "thresholds.action.{class} is `limit`, but [limits] gives {class} no quota"
                    ),
                    ..at.clone()
                });
            }
        }
        for seen in self.seen.iter().filter(|s| s.mode == Mode::Enforce) {
            if seen.effect.action == Some(Action::Limit) {
                let unlimited = match seen.effect.class {
                    _ if self.limits.is_empty() => Some(
                        "`action = \"limit\"`, but no [limits] are set, so nothing is ever limited"
                            .to_owned(),
                    ),
                    Some(class) if !quota(class) => Some(format!(
                        "`action = \"limit\"` with `class = \"{class}\"`, but [limits] gives \
                         {class} no quota, so what this rule classifies is never limited"
                    )),
                    _ => None,
                };
                if let Some(m) = unlimited {
                    self.diagnostics.push(warning_at(&seen.at, m));
                }
            }
            if seen.reads_crawler && self.crawlers.list.is_empty() {
                self.diagnostics.push(warning_at(
                    &seen.at,
                    "tests a crawler claim, but no [[crawler]] is defined, so every claim is \
                     `none`"
                        .to_owned(),
                ));
            }
        }
        let warnings = self.diagnostics.into_result()?;
        let mut rules = self.class_actions.into_iter().fold(
            RuleSet::new(self.rules, self.bot_threshold),
            |set, (class, action, _)| set.with_class_action(class, action),
        );
        if let Some(delay) = self.tarpit {
            rules = rules.with_tarpit_delay(delay);
        }
        Ok(Loaded {
            rules,
            limits: self.limits,
            crawlers: self.crawlers,
            warnings,
            files: self.files,
        })
    }
}

/// The address lists (`ip_file`) a condition names, at any depth.
fn address_lists(when: &When, dir: &Path, out: &mut Vec<PathBuf>) {
    if let Some(f) = &when.ip_file {
        out.push(dir.join(f.get_ref()));
    }
    let all = when.all.iter().flatten();
    let any = when.any.iter().flat_map(|a| a.get_ref());
    let not = when.not.iter().map(|n| &**n.get_ref());
    for inner in all.chain(any).chain(not) {
        address_lists(inner, dir, out);
    }
}

/// The rule files the globs name now, in load order (relative to `base`).
pub fn rule_files(globs: &[String], base: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut diagnostics = Diagnostics::new();
    let files = expand(globs, base, &mut diagnostics);
    diagnostics.into_result().map(|_| files)
}

/// Put `what` before a parse error's message, to say which table it is in.
fn prefix(e: ConfigError, what: &str) -> ConfigError {
    match e {
        ConfigError::Invalid {
            file,
            line,
            column,
            message,
        } => ConfigError::Invalid {
            file,
            line,
            column,
            message: format!("{what}: {message}"),
        },
        e => e,
    }
}

/// A crawler definition and its user-agent patterns.
fn compile_crawler(
    def: CrawlerDef,
    notes: &mut Notes<'_>,
) -> Result<(Crawler, Vec<String>), Located> {
    let name_span = def.name.span();
    let name = def.name.into_inner();
    if name.is_empty() {
        return at(name_span, "a crawler needs a name");
    }
    let (span, patterns) = checked_patterns(def.user_agent, true, notes)?;
    bytes_regex_set(&patterns, span)?;
    let mut nets = Vec::new();
    if let Some(v) = def.ranges {
        nets.extend(networks(v, notes)?);
    }
    if let Some(files) = def.ranges_file {
        let span = files.span();
        for f in files.into_inner().into_vec() {
            nets.extend(ip_list(&notes.origin.dir.join(f), span.clone(), notes)?);
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
            "no `ranges`, `ranges_file` or `rdns`, so no claim could ever be verified",
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

/// CIDR blocks or addresses written in a rule file; host bits set in a
/// block (`10.0.0.1/8`) are cleared, with a warning.
fn networks(value: Spanned<Items>, notes: &mut Notes<'_>) -> Result<Vec<Cidr>, Located> {
    let mut nets = Vec::new();
    for (span, item) in Items::spanned(value)? {
        nets.push(item.parse::<Cidr>().or_else(|e| at(span.clone(), e))?);
        if let Some(w) = Cidr::host_bits_warning(&item) {
            notes.warn(span, w);
        }
    }
    Ok(nets)
}

fn read(path: &Path) -> Result<Origin, ConfigError> {
    let file = path.display().to_string();
    let io = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let text = bounded_read::read_text(path, MAX_FILE, "rule files").map_err(io)?;
    Ok(Origin {
        file,
        dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
        text: Arc::from(text),
    })
}

/// The files the globs name, each glob's matches in name order. Only the
/// last path component may hold `*` or `?`.
fn expand(globs: &[String], base: &Path, diagnostics: &mut Diagnostics) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for glob in globs {
        // `rules/a.toml` rather than `./rules/a.toml` in diagnostics.
        let path = if base == Path::new(".") {
            PathBuf::from(glob)
        } else {
            base.join(glob)
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let mut matched = if name.contains(['*', '?']) {
            let dir = path.parent().unwrap_or(Path::new("."));
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(source) => {
                    diagnostics.absorb(ConfigError::Read {
                        path: dir.to_owned(),
                        source,
                    });
                    continue;
                }
            };
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
            diagnostics.push(Diagnostic::file_error(
                glob.clone(),
                "`rules`: this pattern matches no file",
            ));
        }
        matched.retain(|p| !files.contains(p));
        files.extend(matched);
    }
    files
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

fn compile_rule(def: RuleDef, notes: &mut Notes<'_>) -> Result<Rule, Located> {
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
            "a rule name is 1-64 letters, digits, `-`, `_`, `.` or `:`",
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
                    format!("mode `{other}`, expected `enforce` or `shadow`"),
                );
            }
        },
    };
    let when = match def.when {
        None => Condition::Always,
        Some(when) => compile_when(when, notes)?,
    };
    if def.score == 0 && def.class.is_none() && def.action.is_none() {
        return at(
            name_span,
            "no effect: give it a score, a class or an action",
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

fn strings(value: Spanned<Items>) -> Result<(Range<usize>, Vec<String>), Located> {
    let span = value.span();
    let list = Items::spanned(value)?.into_iter().map(|(_, s)| s).collect();
    Ok((span, list))
}

fn compile_when(when: When, notes: &mut Notes<'_>) -> Result<Condition, Located> {
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
        let (span, list) = checked_patterns(v, false, notes)?;
        all.push(Condition::Path(
            regex_set(&list, span)?,
            super::condition::NOT_IN_UNION,
        ));
    }
    if let Some(v) = when.path_prefix {
        let (span, list) = strings(v)?;
        if list.iter().any(|p| !p.starts_with('/')) {
            return at(span, "path prefixes start with `/`");
        }
        all.push(Condition::PathPrefix(list));
    }
    if let Some(v) = when.query {
        let (span, list) = checked_patterns(v, true, notes)?;
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
        let regex = bytes_regex(&h.matches, span, notes)?;
        all.push(Condition::Header(name, regex));
    }
    if let Some(r) = when.any_header {
        let span = r.span();
        let regex = bytes_regex(r.get_ref(), span, notes)?;
        all.push(Condition::AnyHeader(Screened::new(regex, r.get_ref())));
    }
    match when.path_escapes_root {
        Some(true) => all.push(Condition::PathEscapesRoot),
        Some(false) => all.push(Condition::Not(Box::new(Condition::PathEscapesRoot))),
        None => {}
    }
    if let Some(v) = when.user_agent {
        let (span, list) = checked_patterns(v, true, notes)?;
        all.push(Condition::UserAgent(
            bytes_regex_set(&list, span)?,
            super::condition::NOT_IN_UNION,
        ));
    }
    if let Some(v) = when.user_agent_contains {
        let (span, list) = strings(v)?;
        if list.iter().any(String::is_empty) {
            return at(span, "empty strings would match every user agent");
        }
        if list.len() > super::condition::FEW_STRINGS {
            let ac = aho_corasick::AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .build(&list)
                .or_else(|e| at(span, format!("cannot build the string matcher: {e}")))?;
            all.push(Condition::UserAgentContainsMany(ac));
        } else {
            // `(?i)` folds ASCII only: the set is built with Unicode off.
            let patterns: Vec<String> = list
                .iter()
                .map(|s| format!("(?i){}", regex::escape(s)))
                .collect();
            let set = BytesRegexSetBuilder::new(&patterns)
                .unicode(false)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .or_else(|e| at(span, format!("cannot build the string matcher: {e}")))?;
            all.push(Condition::UserAgentContains(
                set,
                super::condition::NOT_IN_UNION,
            ));
        }
    }
    match when.user_agent_missing {
        Some(true) => all.push(Condition::UserAgentMissing),
        Some(false) => all.push(Condition::Not(Box::new(Condition::UserAgentMissing))),
        None => {}
    }
    if let Some(v) = when.ip {
        let nets = networks(v, notes)?;
        all.push(Condition::Ip(NetSet::new(&nets)));
    }
    if let Some(f) = when.ip_file {
        let span = f.span();
        let nets = ip_list(&notes.origin.dir.join(f.get_ref()), span, notes)?;
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
    if let Some(list) = when.all {
        let compiled = list
            .into_iter()
            .map(|w| compile_when(w, notes))
            .collect::<Result<Vec<_>, _>>()?;
        all.push(Condition::All(compiled));
    }
    if let Some(list) = when.any {
        let span = list.span();
        if list.get_ref().is_empty() {
            notes.warn(
                span,
                "`any = []` never holds: give it conditions, or remove it",
            );
        }
        let compiled = list
            .into_inner()
            .into_iter()
            .map(|w| compile_when(w, notes))
            .collect::<Result<Vec<_>, _>>()?;
        all.push(Condition::Any(compiled));
    }
    if let Some(not) = when.not {
        let span = not.span();
        let inner = compile_when(*not.into_inner(), notes)?;
        if always(&inner) {
            notes.warn(
                span,
                "this `not` never holds, as what it negates always does: give it conditions, or remove it",
            );
        }
        all.push(Condition::Not(Box::new(inner)));
    }
    Ok(match all.len() {
        0 => Condition::Always,
        1 => all.remove(0),
        _ => Condition::All(all),
    })
}

/// Patterns checked one by one, so that an error points at the pattern:
/// each must compile (as a bytes regex with ASCII classes when `bytes`)
/// and must not match the empty string. The list's span and the patterns.
fn checked_patterns(
    value: Spanned<Items>,
    bytes: bool,
    notes: &mut Notes<'_>,
) -> Result<(Range<usize>, Vec<String>), Located> {
    let whole = value.span();
    let items = Items::spanned(value)?;
    for (span, pattern) in &items {
        check_pattern(pattern, span.clone(), bytes, notes)?;
    }
    Ok((whole, items.into_iter().map(|(_, p)| p).collect()))
}

/// One pattern compiles; a warning when it matches the empty string
/// (then it matches every value: sometimes meant, as `^$`, often not).
fn check_pattern(
    pattern: &str,
    span: Range<usize>,
    bytes: bool,
    notes: &mut Notes<'_>,
) -> Result<(), Located> {
    let empty = if bytes {
        regex::bytes::RegexBuilder::new(pattern)
            .unicode(false)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(|r| r.is_match(b""))
    } else {
        regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(|r| r.is_match(""))
    };
    match empty {
        Err(e) => at(span, regex_error(pattern, &e)),
        Ok(true) => {
            notes.warn(
                span,
                format!(
                    "regex `{pattern}` matches the empty string, so it matches every value it is tried on"
                ),
            );
            Ok(())
        }
        Ok(false) => Ok(()),
    }
}

/// A regex error on one line: the pattern (its start, if long) and what
/// is wrong with it.
fn regex_error(pattern: &str, e: &regex::Error) -> String {
    const SHOWN: usize = 48;
    let short: String;
    let pattern = if pattern.chars().count() > SHOWN {
        short = pattern.chars().take(SHOWN).chain(['…']).collect();
        &short
    } else {
        pattern
    };
    match e {
        regex::Error::Syntax(text) => {
            let why = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(text);
            format!("invalid regex `{pattern}`: {why}")
        }
        other => format!("invalid regex `{pattern}`: {other}"),
    }
}

/// Checked patterns (see [`checked_patterns`]) as one set.
fn regex_set(patterns: &[String], span: Range<usize>) -> Result<RegexSet, Located> {
    RegexSetBuilder::new(patterns)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .or_else(|e| at(span, format!("invalid regexes: {e}")))
}

/// One regex matched against bytes (header values may be any bytes).
fn bytes_regex(
    pattern: &str,
    span: Range<usize>,
    notes: &mut Notes<'_>,
) -> Result<BytesRegex, Located> {
    check_pattern(pattern, span.clone(), true, notes)?;
    regex::bytes::RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .or_else(|e| at(span, regex_error(pattern, &e)))
}

/// Checked patterns (see [`checked_patterns`]) matched against bytes, as
/// one set. ASCII classes (`\w`, `\b`, `(?i)`) unless a pattern opts in
/// with `(?u)`: Unicode word boundaries on hostile non-ASCII input fall
/// back to a slow engine, and a client chooses the bytes.
fn bytes_regex_set(patterns: &[String], span: Range<usize>) -> Result<BytesRegexSet, Located> {
    BytesRegexSetBuilder::new(patterns)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .or_else(|e| at(span, format!("invalid regexes: {e}")))
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

/// At most this many errors, and this many warnings, are reported per
/// address list (a file of something else would give one per line).
const LIST_REPORTS: usize = 10;

/// An address list: one CIDR or address per line; `#` starts a comment.
/// `span` is where the rule file names it. Bad lines are reported at
/// their own line of the list; host bits set are cleared, with a warning.
fn ip_list(path: &Path, span: Range<usize>, notes: &mut Notes<'_>) -> Result<Vec<Cidr>, Located> {
    let text = bounded_read::read_text(path, MAX_LIST, "address lists")
        .or_else(|e| at(span, format!("cannot read {}: {e}", path.display())))?;
    let list = Origin {
        file: path.display().to_string(),
        dir: PathBuf::new(),
        text: Arc::from(text),
    };
    let mut nets = Vec::new();
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let (mut more_errors, mut more_warnings) = (0usize, 0usize);
    let mut offset = 0;
    for raw in list.text.split_inclusive('\n') {
        let content = raw.split('#').next().unwrap_or("");
        let entry = content.trim();
        let start = offset + (content.len() - content.trim_start().len());
        offset += raw.len();
        if entry.is_empty() {
            continue;
        }
        let here = Some(start..start + entry.len());
        match entry.parse::<Cidr>() {
            Ok(net) => nets.push(net),
            Err(e) if errors.len() < LIST_REPORTS => {
                errors.push(Diagnostic::at(
                    Severity::Error,
                    &list,
                    here.clone(),
                    None,
                    e,
                ));
            }
            Err(_) => more_errors += 1,
        }
        if let Some(w) = Cidr::host_bits_warning(entry) {
            if warnings.len() < LIST_REPORTS {
                warnings.push(Diagnostic::at(Severity::Warning, &list, here, None, w));
            } else {
                more_warnings += 1;
            }
        }
    }
    if more_warnings > 0 {
        warnings.push(Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::file_error(
                list.file.clone(),
                format!("{more_warnings} more entries with host bits set"),
            )
        });
    }
    notes.warnings.extend(warnings);
    if errors.is_empty() {
        return Ok(nets);
    }
    if more_errors > 0 {
        errors.push(Diagnostic::file_error(
            list.file.clone(),
            format!("{more_errors} more lines that are not addresses or CIDR blocks"),
        ));
    }
    Err(Located {
        span: None,
        message: String::new(),
        elsewhere: errors,
    })
}

mod analysis;
#[cfg(test)]
mod tests;
