//! Rules stage: the operator's ordered rules, each a condition over facts,
//! identity and signals with effects on score, class and action.

pub mod condition;
pub mod file;
pub mod netset;
pub mod path;
pub mod screen;

use std::sync::Arc;

pub use condition::Condition;
use condition::{Input, UnionMatches, UnionOf};

use crate::facts::Facts;
use crate::identity::Identity;
use crate::memo_set::MemoSet;
use crate::signals::Signals;
use crate::verdict::{Action, Class};

/// Whether a rule acts or only reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Matches take effect.
    #[default]
    Enforce,
    /// Matches are counted and reported, with no effect on the verdict.
    Shadow,
}

/// What a matching rule does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effect {
    /// Added to the bot score.
    pub score: i32,
    /// Sets the class outright.
    pub class: Option<Class>,
    /// Chooses the action.
    pub action: Option<Action>,
}

/// One named rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The name reported in `x-usher-reasons`, logs and metrics.
    pub name: Arc<str>,
    /// When it matches.
    pub when: Condition,
    /// What it does when it matches.
    pub effect: Effect,
    /// Enforced or shadow.
    pub mode: Mode,
}

/// One rule's result on one request, explained.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The rule.
    pub name: Arc<str>,
    /// Enforced or shadow.
    pub mode: Mode,
    /// Matched, did not, or could not be known.
    pub matched: Option<bool>,
    /// The condition that decided, in words.
    pub because: String,
    /// What the rule does when it matches.
    pub effect: Effect,
}

/// What the rules concluded about one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Sum of the scores of the enforced rules that matched.
    pub score: i32,
    /// The class set by the first enforced matching rule that sets one.
    pub class: Option<Class>,
    /// The action chosen by the first enforced matching rule that sets one.
    pub action: Option<Action>,
    /// Names of the enforced rules that matched, in order.
    pub reasons: Vec<Arc<str>>,
    /// Names of the shadow rules that matched, in order.
    pub shadow: Vec<Arc<str>>,
}

/// The ordered rules, the score at which a request becomes a bot, and the
/// action each class gets when no rule chooses one.
#[derive(Clone, Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    bot_threshold: i32,
    class_actions: [Action; Class::ALL.len()],
    tarpit_delay: std::time::Duration,
    /// Whether any rule reads the query (decoding it is then worth it).
    reads_query: bool,
    /// Every `user_agent` pattern of every rule, as one set: when it does
    /// not match (most people's browsers), no `user_agent` condition can.
    user_agents: Option<Arc<MemoSet>>,
    /// Every `path` pattern of every rule, as one set.
    paths: Option<Arc<MemoSet>>,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::new(Vec::new(), Self::DEFAULT_BOT_THRESHOLD)
    }
}

impl RuleSet {
    /// The bot score threshold when none is configured.
    pub const DEFAULT_BOT_THRESHOLD: i32 = 100;

    /// A rule set evaluated in the given order.
    pub fn new(mut rules: Vec<Rule>, bot_threshold: i32) -> Self {
        RuleSet {
            reads_query: rules.iter().any(|r| r.when.reads_query()),
            user_agents: union(&mut rules, UnionOf::UserAgent),
            paths: union(&mut rules, UnionOf::Path),
            rules,
            bot_threshold,
            class_actions: [Action::Forward; Class::ALL.len()],
            tarpit_delay: Self::DEFAULT_TARPIT_DELAY,
        }
    }

    /// How long the tarpit holds a request when none is configured.
    pub const DEFAULT_TARPIT_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Set how long the tarpit holds a request.
    pub fn with_tarpit_delay(mut self, delay: std::time::Duration) -> Self {
        self.tarpit_delay = delay;
        self
    }

    /// How long the tarpit holds a request.
    pub fn tarpit_delay(&self) -> std::time::Duration {
        self.tarpit_delay
    }

    /// Set the action a class gets when no rule chooses one.
    pub fn with_class_action(mut self, class: Class, action: Action) -> Self {
        self.class_actions[class.index()] = action;
        self
    }

    /// The action a class gets when no rule chooses one.
    pub fn class_action(&self, class: Class) -> Action {
        self.class_actions[class.index()]
    }

    /// The score at or over which a request is `malicious_bot`.
    pub fn bot_threshold(&self) -> i32 {
        self.bot_threshold
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Each rule's result on one request and the condition that decided
    /// it, in order (for `usher explain`).
    pub fn trace(&self, facts: &Facts<'_>, identity: &Identity, signals: &Signals) -> Vec<Trace> {
        self.with_input(facts, identity, signals, true, |input| {
            self.rules
                .iter()
                .map(|rule| {
                    let (matched, because) = rule.when.explain(input);
                    Trace {
                        name: rule.name.clone(),
                        mode: rule.mode,
                        matched,
                        because,
                        effect: rule.effect.clone(),
                    }
                })
                .collect()
        })
    }

    /// Evaluate every rule against one request.
    pub fn evaluate(&self, facts: &Facts<'_>, identity: &Identity, signals: &Signals) -> Outcome {
        let mut out = Outcome::default();
        if self.rules.is_empty() {
            return out;
        }
        self.with_input(facts, identity, signals, self.reads_query, |input| {
            for rule in &self.rules {
                if !rule.when.matches(input) {
                    continue;
                }
                if rule.mode == Mode::Shadow {
                    out.shadow.push(rule.name.clone());
                    continue;
                }
                out.score = out.score.saturating_add(rule.effect.score);
                out.class = out.class.or(rule.effect.class);
                out.action = out.action.or(rule.effect.action);
                out.reasons.push(rule.name.clone());
            }
        });
        out
    }

    /// Run `f` on what conditions read of one request: the normalised
    /// path, the decoded query (when `decode_query`), and the user-agent
    /// and path unions, each scanned if and when a condition asks.
    fn with_input<R>(
        &self,
        facts: &Facts<'_>,
        identity: &Identity,
        signals: &Signals,
        decode_query: bool,
        f: impl FnOnce(&Input<'_, '_>) -> R,
    ) -> R {
        let normalized = path::normalize(facts.path);
        let query_decoded = if decode_query {
            facts.query.and_then(path::decode_query)
        } else {
            None
        };
        let user_agent_matches = self
            .user_agents
            .as_ref()
            .zip(facts.user_agent)
            .map(|(union, ua)| UnionMatches::new(union, ua));
        let path_matches = self
            .paths
            .as_ref()
            .map(|union| UnionMatches::new(union, normalized.path.as_bytes()));
        f(&Input {
            facts,
            identity,
            signals,
            path: &normalized.path,
            escaped_root: normalized.escaped_root,
            query_decoded: query_decoded.as_deref(),
            user_agent_matches,
            path_matches,
        })
    }
}

/// One set of every pattern of `rules`' conditions of kind `of`, each told
/// where its patterns start, built as each condition's own set is (ASCII
/// classes for user agents, Unicode for paths) so it matches exactly as
/// they do. None when fewer than two conditions would share it, or it is
/// too big to build (each condition then scans for itself).
fn union(rules: &mut [Rule], of: UnionOf) -> Option<Arc<MemoSet>> {
    let mut patterns = Vec::new();
    let mut conditions = 0;
    for rule in rules {
        let before = patterns.len();
        rule.when.place_in_union(of, &mut patterns);
        conditions += usize::from(patterns.len() > before);
    }
    if conditions < 2 {
        return None;
    }
    regex::bytes::RegexSetBuilder::new(&patterns)
        .unicode(of == UnionOf::Path)
        .size_limit(64 << 20)
        .build()
        .ok()
        .map(|set| Arc::new(MemoSet::new(set)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn the_unions_never_change_an_outcome() {
        let mut config =
            crate::config::Config::parse("rules = [\"rules/*.toml\"]", "test").expect("config");
        config.origin.dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let classifier = crate::classify::Classifier::from_config(&config).expect("rules");
        let with = classifier.rules();
        assert!(
            with.user_agents.is_some() && with.paths.is_some(),
            "the shipped rules share unions"
        );
        let mut without = RuleSet::new(with.rules().to_vec(), with.bot_threshold());
        (without.user_agents, without.paths) = (None, None);

        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let agents = [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "python-requests/2.32.3",
            "curl/8.5.0",
            "sqlmap/1.8#stable (https://sqlmap.org)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (compatible; ExampleBot/1.0; +https://example.com/bot)",
            "Mozilla/5.0 Ünïcödé \u{1F916} bot",
            "Mozilla/5.0 PLAYWRIGHT/1.48 (x.y; z) phantomjs",
            // Unicode folding would take U+017F for `s`; ASCII folding must not.
            "Mozilla/5.0 Headle\u{17F}\u{17F}Chrome/120",
            "",
            "-",
        ];
        // Huge ones: a bot token past the first 64 KiB, and none at all.
        let huge = [
            format!("{}curl/8", "é".repeat(32 * 1024)),
            "A".repeat(100_000),
        ];
        // Paths too long to be remembered are scanned every time.
        let long_paths = [
            format!("/{}/.env", "a".repeat(2000)),
            format!("/{}/wp-login.php", "seg/".repeat(500)),
        ];
        for agent in agents
            .iter()
            .copied()
            .chain(huge.iter().map(String::as_str))
        {
            for path in [
                "/",
                "/wp-login.php",
                "/.env",
                "/products/7?q=1",
                "/PhpMyAdmin/index.php",
                "/a/../../etc/passwd",
                "/%2e%2e/%2e%2e/etc/shadow",
                "/uploads/shell.php",
                "/user/LOGIN",
                "/caf%C3%A9/%E9t%E9",
                "/api/v1/sign-in.json",
            ]
            .into_iter()
            .chain(long_paths.iter().map(String::as_str))
            {
                let req = http::Request::get(path)
                    .header("user-agent", agent)
                    .header("accept-language", "en")
                    .body(())
                    .unwrap();
                let (parts, ()) = req.into_parts();
                let facts = Facts::new(&parts, ip, ip, std::time::SystemTime::UNIX_EPOCH);
                let signals = Signals::default();
                assert_eq!(
                    with.evaluate(&facts, &Identity::Anonymous, &signals),
                    without.evaluate(&facts, &Identity::Anonymous, &signals),
                    "{agent} {path}"
                );
            }
        }
    }
}
