//! Conditions: what a rule looks at. Compiled once at load (regexes and
//! literal lists into `RegexSet`s); evaluated per request without
//! allocating.

use aho_corasick::AhoCorasick;
use http::{HeaderName, Method};
use regex::RegexSet;
use regex::bytes::{Regex as BytesRegex, RegexSet as BytesRegexSet};

use super::netset::NetSet;
use super::screen::Screened;
use crate::facts::Facts;
use crate::identity::Identity;
use crate::memo_set::{Matched, MemoSet};
use crate::signals::Signals;
use crate::verdict::Class;

/// The kind of identity a request has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    /// No credential.
    Anonymous,
    /// A verified account.
    User,
    /// A verified machine client.
    Service,
    /// A credential that failed verification.
    Invalid,
    /// A credential that could not be checked.
    Unverified,
}

impl IdentityKind {
    /// The kind of an identity.
    pub fn of(identity: &Identity) -> Self {
        match identity {
            Identity::Anonymous => IdentityKind::Anonymous,
            Identity::User { .. } => IdentityKind::User,
            Identity::Service { .. } => IdentityKind::Service,
            Identity::Invalid { .. } => IdentityKind::Invalid,
            Identity::Unverified { .. } => IdentityKind::Unverified,
        }
    }

    /// The kind's name in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Anonymous => "anonymous",
            IdentityKind::User => "user",
            IdentityKind::Service => "service",
            IdentityKind::Invalid => "invalid",
            IdentityKind::Unverified => "unverified",
        }
    }

    /// Parse a kind's name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "anonymous" => IdentityKind::Anonymous,
            "user" => IdentityKind::User,
            "service" => IdentityKind::Service,
            "invalid" => IdentityKind::Invalid,
            "unverified" => IdentityKind::Unverified,
            _ => return None,
        })
    }
}

/// A numeric signal a rule can compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalName {
    /// Failed credentials from the client in the last five minutes.
    AuthFailures5m,
    /// Requests from the client in the last second.
    Rate1s,
    /// … ten seconds.
    Rate10s,
    /// … minute.
    Rate60s,
    /// … five minutes.
    Rate5m,
    /// Upstream 4xx answers to the client in the last minute.
    Status4xx60s,
    /// Upstream 404 answers to the client in the last minute.
    Status40460s,
    /// Upstream 401 and 403 answers to the client in the last minute.
    Status401Or40360s,
    /// The share of the client's upstream answers that were 4xx, last
    /// minute (0 without answers).
    Status4xxRatio60s,
    /// Distinct paths (with query) the client asked for in the last
    /// minute, estimated.
    DistinctPaths60s,
    /// The coefficient of variation of the gaps between the client's
    /// requests; unknown (no comparison holds) until ten gaps were seen.
    InterarrivalCv,
    /// 1 while another replica's `malicious_bot` verdict on the client
    /// stands (shared state), else 0.
    SharedVerdict,
}

impl SignalName {
    /// The names rules may use, in the order of `ALL`.
    pub const NAMES: &'static [&'static str] = &[
        "auth_failures_5m",
        "rate_1s",
        "rate_10s",
        "rate_60s",
        "rate_5m",
        "status_4xx_60s",
        "status_404_60s",
        "status_4xx_ratio_60s",
        "status_401_403_60s",
        "distinct_paths_60s",
        "interarrival_cv",
        "shared_verdict",
    ];

    const ALL: [SignalName; 12] = [
        SignalName::AuthFailures5m,
        SignalName::Rate1s,
        SignalName::Rate10s,
        SignalName::Rate60s,
        SignalName::Rate5m,
        SignalName::Status4xx60s,
        SignalName::Status40460s,
        SignalName::Status4xxRatio60s,
        SignalName::Status401Or40360s,
        SignalName::DistinctPaths60s,
        SignalName::InterarrivalCv,
        SignalName::SharedVerdict,
    ];

    /// The signal's name in rule files.
    pub fn as_str(self) -> &'static str {
        let i = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Self::NAMES[i]
    }

    /// Parse a signal's name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }

    /// The signal's value, if known.
    fn value(self, s: &Signals) -> Option<f64> {
        Some(match self {
            SignalName::AuthFailures5m => f64::from(s.auth_failures_5m),
            SignalName::Rate1s => f64::from(s.rates[0]),
            SignalName::Rate10s => f64::from(s.rates[1]),
            SignalName::Rate60s => f64::from(s.rates[2]),
            SignalName::Rate5m => f64::from(s.rates[3]),
            SignalName::Status4xx60s => f64::from(s.status_4xx_60s),
            SignalName::Status40460s => f64::from(s.status_404_60s),
            SignalName::Status401Or40360s => f64::from(s.status_401_403_60s),
            SignalName::Status4xxRatio60s if s.answered_60s == 0 => 0.0,
            SignalName::Status4xxRatio60s => {
                f64::from(s.status_4xx_60s) / f64::from(s.answered_60s)
            }
            SignalName::DistinctPaths60s => f64::from(s.distinct_paths_60s),
            SignalName::InterarrivalCv => f64::from(s.interarrival_cv?),
            SignalName::SharedVerdict => f64::from(u8::from(s.shared_verdict)),
        })
    }
}

/// A comparison of a signal with a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comparison {
    /// `>`
    Gt(f64),
    /// `>=`
    Ge(f64),
    /// `<`
    Lt(f64),
    /// `<=`
    Le(f64),
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Comparison::Gt(x) => write!(f, "> {x}"),
            Comparison::Ge(x) => write!(f, ">= {x}"),
            Comparison::Lt(x) => write!(f, "< {x}"),
            Comparison::Le(x) => write!(f, "<= {x}"),
        }
    }
}

impl Comparison {
    fn holds(self, v: f64) -> bool {
        match self {
            Comparison::Gt(x) => v > x,
            Comparison::Ge(x) => v >= x,
            Comparison::Lt(x) => v < x,
            Comparison::Le(x) => v <= x,
        }
    }
}

/// What a rule looks at.
#[derive(Clone, Debug)]
pub enum Condition {
    /// Every request.
    Always,
    /// Every one of these.
    All(Vec<Condition>),
    /// At least one of these.
    Any(Vec<Condition>),
    /// Not this.
    Not(Box<Condition>),
    /// The method is one of these.
    Method(Vec<Method>),
    /// The normalised path starts with one of these.
    PathPrefix(Vec<String>),
    /// The normalised path matches one of these regexes; the index is
    /// where they start in the rule set's union of every `path` pattern
    /// ([`NOT_IN_UNION`] until the rule set places them).
    Path(RegexSet, usize),
    /// The path climbs above the root (`..` past `/`), as no browser sends.
    PathEscapesRoot,
    /// The query string, raw or percent-decoded, matches one of these.
    Query(BytesRegexSet),
    /// The host (without port, lower case) is one of these.
    Host(Vec<String>),
    /// Every one of these headers is present.
    HeaderPresent(Vec<HeaderName>),
    /// None of these headers is present.
    HeaderAbsent(Vec<HeaderName>),
    /// A header is present and one of its values matches (as bytes).
    Header(HeaderName, BytesRegex),
    /// Some header's value matches (as bytes).
    AnyHeader(Screened),
    /// The user agent matches one of these regexes (as bytes); the index
    /// is where they start in the rule set's union of every `user_agent`
    /// pattern ([`NOT_IN_UNION`] until the rule set places them).
    UserAgent(BytesRegexSet, usize),
    /// The user agent contains one of these strings (ASCII
    /// case-insensitive), each an escaped pattern so that it joins the
    /// `user_agent` union like [`Condition::UserAgent`].
    UserAgentContains(BytesRegexSet, usize),
    /// The same for a long list (past [`FEW_STRINGS`]): an Aho-Corasick
    /// automaton of its own, which builds in milliseconds where a regex
    /// set of thousands of strings would take seconds.
    UserAgentContainsMany(AhoCorasick),
    /// The request has no usable `User-Agent`.
    UserAgentMissing,
    /// The client address is in one of these networks.
    Ip(NetSet),
    /// The identity is of one of these kinds.
    Identity(Vec<IdentityKind>),
    /// The identity alone earns one of these classes.
    IdentityClass(Vec<Class>),
    /// A signal compares so.
    Signal(SignalName, Comparison),
    /// The crawler claim has one of these statuses.
    Crawler(Vec<crate::crawlers::Status>),
    /// A verified credential's claim has one of these values.
    Claim(crate::config::identity::ClaimMatch),
}

/// Everything a condition may look at.
#[derive(Debug)]
pub struct Input<'a, 'f> {
    /// The request.
    pub facts: &'a Facts<'f>,
    /// Its identity.
    pub identity: &'a Identity,
    /// Its signals.
    pub signals: &'a Signals,
    /// Its normalised path.
    pub path: &'a str,
    /// Whether the raw path climbed above the root.
    pub escaped_root: bool,
    /// The query, percent-decoded, when it held escapes.
    pub query_decoded: Option<&'a [u8]>,
    /// The rule set's union of every `user_agent` pattern against this
    /// user agent. None: each condition scans for itself.
    pub user_agent_matches: Option<UnionMatches<'a>>,
    /// The rule set's union of every `path` pattern against the
    /// normalised path. None: each condition scans for itself.
    pub path_matches: Option<UnionMatches<'a>>,
}

/// Which conditions' patterns share a union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnionOf {
    /// `user_agent` conditions.
    UserAgent,
    /// `path` conditions.
    Path,
}

/// Which of a rule set's patterns of one kind match one request: one scan
/// of their union, done the first time a condition asks (never, when no
/// rule reaches such a condition), instead of one per condition.
#[derive(Debug)]
pub struct UnionMatches<'a> {
    union: &'a MemoSet,
    subject: &'a [u8],
    matched: std::cell::OnceCell<Matched>,
}

impl<'a> UnionMatches<'a> {
    /// Nothing scanned yet.
    pub fn new(union: &'a MemoSet, subject: &'a [u8]) -> Self {
        UnionMatches {
            union,
            subject,
            matched: std::cell::OnceCell::new(),
        }
    }

    /// Whether one of the `len` patterns from `first` matched; None when
    /// they are not in the union.
    fn any(&self, first: usize, len: usize) -> Option<bool> {
        let end = first
            .checked_add(len)
            .filter(|&end| end <= self.union.len())?;
        let matched = self
            .matched
            .get_or_init(|| self.union.matches(self.subject));
        Some(matched.any(first..end))
    }
}

/// The place of a `user_agent` or `path` condition not (yet) in a union.
pub const NOT_IN_UNION: usize = usize::MAX;

/// `user_agent_contains` lists up to this long join the user-agent union
/// as patterns; longer ones get an automaton of their own.
pub const FEW_STRINGS: usize = 64;

impl Condition {
    /// Append the patterns of every condition of kind `of` (nested ones
    /// included) to `union`, each condition noting where its own start.
    pub fn place_in_union(&mut self, of: UnionOf, union: &mut Vec<String>) {
        let (patterns, first) = match (self, of) {
            (
                Condition::UserAgent(set, first) | Condition::UserAgentContains(set, first),
                UnionOf::UserAgent,
            ) => (set.patterns(), first),
            (Condition::Path(set, first), UnionOf::Path) => (set.patterns(), first),
            (Condition::All(list) | Condition::Any(list), _) => {
                list.iter_mut().for_each(|c| c.place_in_union(of, union));
                return;
            }
            (Condition::Not(c), _) => return c.place_in_union(of, union),
            _ => return,
        };
        *first = union.len();
        union.extend(patterns.iter().cloned());
    }

    /// Whether the condition (or one nested in it) reads the query, so the
    /// decoded query is worth computing.
    pub fn reads_query(&self) -> bool {
        match self {
            Condition::Query(_) => true,
            Condition::All(list) | Condition::Any(list) => list.iter().any(Condition::reads_query),
            Condition::Not(c) => c.reads_query(),
            _ => false,
        }
    }

    /// Whether the condition holds for a request: `Some(true)`,
    /// `Some(false)`, or `None` when it cannot be known (a header a log
    /// did not record, a signal without enough data). Unknown propagates
    /// as in three-valued logic: `all` is false if any part is false,
    /// `any` true if any part is true, `not` of unknown is unknown. A rule
    /// fires only on `Some(true)`.
    pub fn eval(&self, input: &Input<'_, '_>) -> Option<bool> {
        let facts = input.facts;
        // A header not in the request: absent, or unrecorded in a log.
        let unrecorded = |name: &HeaderName| facts.recorded.is_some_and(|r| !r.contains(name));
        let missing = |name: &HeaderName| (!unrecorded(name)).then_some(false);
        Some(match self {
            Condition::Always => true,
            Condition::All(all) => {
                let mut unknown = false;
                for c in all {
                    match c.eval(input) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                return (!unknown).then_some(true);
            }
            Condition::Any(any) => {
                let mut unknown = false;
                for c in any {
                    match c.eval(input) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                return (!unknown).then_some(false);
            }
            Condition::Not(c) => return c.eval(input).map(|b| !b),
            Condition::Method(methods) => methods.contains(facts.method),
            Condition::PathPrefix(prefixes) => {
                prefixes.iter().any(|p| input.path.starts_with(p.as_str()))
            }
            Condition::Path(set, first) => match &input.path_matches {
                Some(union) => union
                    .any(*first, set.len())
                    .unwrap_or_else(|| set.is_match(input.path)),
                None => set.is_match(input.path),
            },
            Condition::PathEscapesRoot => input.escaped_root,
            Condition::Query(set) => {
                facts.query.is_some_and(|q| set.is_match(q.as_bytes()))
                    || input.query_decoded.is_some_and(|q| set.is_match(q))
            }
            Condition::Host(hosts) => match facts.host {
                Some(h) => {
                    let name = host_name(h);
                    hosts.iter().any(|x| x.eq_ignore_ascii_case(name))
                }
                None => return missing(&http::header::HOST),
            },
            Condition::HeaderPresent(names) => {
                let mut absent = names.iter().filter(|n| !facts.headers.contains_key(*n));
                match absent.next() {
                    None => true,
                    Some(first) if unrecorded(first) || absent.any(unrecorded) => return None,
                    Some(_) => false,
                }
            }
            Condition::HeaderAbsent(names) => {
                if names.iter().any(|n| facts.headers.contains_key(n)) {
                    return Some(false);
                }
                if names.iter().any(unrecorded) {
                    return None;
                }
                true
            }
            Condition::Header(name, regex) => {
                let mut values = facts.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return missing(name);
                }
                values.any(|v| regex.is_match(v.as_bytes()))
            }
            Condition::AnyHeader(regex) => {
                if facts.headers.values().any(|v| regex.is_match(v.as_bytes())) {
                    return Some(true);
                }
                // Some unrecorded header might have matched.
                return facts.recorded.is_none().then_some(false);
            }
            Condition::UserAgent(set, first) | Condition::UserAgentContains(set, first) => {
                match facts.user_agent {
                    Some(ua) => match &input.user_agent_matches {
                        Some(union) => union
                            .any(*first, set.len())
                            .unwrap_or_else(|| set.is_match(ua)),
                        None => set.is_match(ua),
                    },
                    None => return missing(&http::header::USER_AGENT),
                }
            }
            Condition::UserAgentContainsMany(ac) => match facts.user_agent {
                Some(ua) => ac.is_match(ua),
                None => return missing(&http::header::USER_AGENT),
            },
            Condition::UserAgentMissing => {
                if facts.user_agent.is_none() && unrecorded(&http::header::USER_AGENT) {
                    return None;
                }
                input.signals.user_agent_missing
            }
            Condition::Ip(nets) => nets.contains(facts.client_ip),
            Condition::Identity(kinds) => kinds.contains(&IdentityKind::of(input.identity)),
            Condition::IdentityClass(classes) => classes.contains(&input.identity.class()),
            Condition::Signal(name, cmp) => return name.value(input.signals).map(|v| cmp.holds(v)),
            Condition::Crawler(statuses) => statuses.contains(&input.signals.crawler.status()),
            Condition::Claim(m) => input
                .identity
                .claims()
                .is_some_and(|claims| crate::identity::jwt::claim_matches(m, claims)),
        })
    }

    /// Whether the condition certainly holds (unknown counts as no).
    pub fn matches(&self, input: &Input<'_, '_>) -> bool {
        self.eval(input) == Some(true)
    }

    /// The condition's result and the part that decided it, in words: for
    /// `all`, the first part that failed (or all of them when it held);
    /// for `any`, the first that held. For `usher explain`; not on the hot
    /// path.
    pub fn explain(&self, input: &Input<'_, '_>) -> (Option<bool>, String) {
        let result = self.eval(input);
        let because = match self {
            Condition::All(parts) | Condition::Any(parts) => {
                let decided = |want: Option<bool>| {
                    parts
                        .iter()
                        .map(|c| c.explain(input))
                        .find(|(r, _)| *r == want)
                        .map(|(_, why)| why)
                };
                let is_all = matches!(self, Condition::All(_));
                match (result, is_all) {
                    (Some(true), true) => {
                        let all: Vec<String> = parts.iter().map(|c| c.explain(input).1).collect();
                        all.join(" and ")
                    }
                    (Some(false), false) => {
                        let all: Vec<String> = parts.iter().map(|c| c.explain(input).1).collect();
                        format!("none of: {}", all.join(" or "))
                    }
                    (r, _) => decided(r).unwrap_or_default(),
                }
            }
            Condition::Not(inner) => format!("not ({})", inner.explain(input).1),
            leaf => leaf.describe(input),
        };
        (result, because)
    }

    /// One condition (not a combination) in words, with what the request
    /// had where that helps.
    fn describe(&self, input: &Input<'_, '_>) -> String {
        let facts = input.facts;
        let list = |items: Vec<String>| {
            if items.len() > 4 {
                format!("[{}, … {} in all]", items[..3].join(", "), items.len())
            } else {
                format!("[{}]", items.join(", "))
            }
        };
        let quoted = |items: &[String]| {
            list(
                items
                    .iter()
                    .map(|p| match p.char_indices().nth(48) {
                        Some((cut, _)) => format!("'{}…'", &p[..cut]),
                        None => format!("'{p}'"),
                    })
                    .collect(),
            )
        };
        match self {
            Condition::Always => "always".to_owned(),
            Condition::All(_) | Condition::Any(_) | Condition::Not(_) => String::new(),
            Condition::Method(m) => format!(
                "method is one of {} (is {})",
                list(m.iter().map(|m| m.to_string()).collect()),
                facts.method
            ),
            Condition::PathPrefix(p) => format!(
                "path starts with one of {} (normalised path {})",
                quoted(p),
                input.path
            ),
            Condition::Path(set, _) => match set.matches(input.path).iter().next() {
                Some(i) => format!("path matches '{}'", set.patterns()[i]),
                None => format!("path matches one of {}", quoted(set.patterns())),
            },
            Condition::PathEscapesRoot => "the path climbs above the root".to_owned(),
            Condition::Query(set) => format!("query matches one of {}", quoted(set.patterns())),
            Condition::Host(h) => format!("host is one of {}", quoted(h)),
            Condition::HeaderPresent(n) => format!(
                "headers present: {}",
                list(n.iter().map(|n| n.to_string()).collect())
            ),
            Condition::HeaderAbsent(n) => format!(
                "headers absent: {}",
                list(n.iter().map(|n| n.to_string()).collect())
            ),
            Condition::Header(name, re) => format!("header {name} matches '{}'", re.as_str()),
            Condition::AnyHeader(re) => format!("some header matches '{}'", re.as_str()),
            Condition::UserAgent(set, _) => {
                let hit = facts
                    .user_agent
                    .and_then(|ua| set.matches(ua).iter().next());
                match hit {
                    Some(i) => format!("user agent matches '{}'", set.patterns()[i]),
                    None => format!("user agent matches one of {}", quoted(set.patterns())),
                }
            }
            Condition::UserAgentContains(set, _) => {
                // Explaining is rare: compile the one pattern that hit to
                // show the text it found.
                let hit = facts.user_agent.and_then(|ua| {
                    let i = set.matches(ua).iter().next()?;
                    let found = regex::bytes::RegexBuilder::new(&set.patterns()[i])
                        .unicode(false)
                        .build()
                        .ok()?
                        .find(ua)?;
                    Some(String::from_utf8_lossy(found.as_bytes()).into_owned())
                });
                match hit {
                    Some(hit) => format!("user agent contains '{hit}'"),
                    None => format!(
                        "user agent contains one of the rule's {} strings",
                        set.len()
                    ),
                }
            }
            Condition::UserAgentContainsMany(ac) => {
                match facts
                    .user_agent
                    .and_then(|ua| ac.find(ua).map(|m| &ua[m.range()]))
                {
                    Some(hit) => format!("user agent contains '{}'", String::from_utf8_lossy(hit)),
                    None => format!(
                        "user agent contains one of the rule's {} strings",
                        ac.patterns_len()
                    ),
                }
            }
            Condition::UserAgentMissing => "no usable user agent".to_owned(),
            Condition::Ip(_) => {
                format!("client address {} in the rule's networks", facts.client_ip)
            }
            Condition::Identity(kinds) => format!(
                "identity is one of {} (is {})",
                list(kinds.iter().map(|k| k.as_str().to_owned()).collect()),
                IdentityKind::of(input.identity).as_str()
            ),
            Condition::IdentityClass(classes) => format!(
                "the identity's class is one of {} (is {})",
                list(classes.iter().map(|c| c.as_str().to_owned()).collect()),
                input.identity.class()
            ),
            Condition::Signal(name, cmp) => {
                let value = name
                    .value(input.signals)
                    .map_or_else(|| "unknown".to_owned(), |v| format!("{v}"));
                format!("{} {cmp} (is {value})", name.as_str())
            }
            Condition::Crawler(statuses) => format!(
                "crawler claim is one of {} (is {})",
                list(statuses.iter().map(|s| s.as_str().to_owned()).collect()),
                input.signals.crawler.status().as_str()
            ),
            Condition::Claim(m) => format!("claim {} is one of {}", m.claim, quoted(&m.any_of)),
        }
    }
}

/// The host without a port (`[v6]` brackets kept).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_drop_ports() {
        assert_eq!(host_name("example.com:8080"), "example.com");
        assert_eq!(host_name("example.com"), "example.com");
        assert_eq!(host_name("[::1]:80"), "[::1]");
    }
}
