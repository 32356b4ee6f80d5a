//! Rules stage: the operator's ordered rules, each a condition over facts,
//! identity and signals with effects on score, class and action.

pub mod condition;
pub mod file;
pub mod netset;
pub mod path;

use std::sync::Arc;

pub use condition::Condition;
use condition::Input;

use crate::facts::Facts;
use crate::identity::Identity;
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
    pub fn new(rules: Vec<Rule>, bot_threshold: i32) -> Self {
        RuleSet {
            reads_query: rules.iter().any(|r| r.when.reads_query()),
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
        let normalized = path::normalize(facts.path);
        let query_decoded = facts.query.and_then(path::decode_query);
        let input = Input {
            facts,
            identity,
            signals,
            path: &normalized.path,
            escaped_root: normalized.escaped_root,
            query_decoded: query_decoded.as_deref(),
        };
        self.rules
            .iter()
            .map(|rule| {
                let (matched, because) = rule.when.explain(&input);
                Trace {
                    name: rule.name.clone(),
                    mode: rule.mode,
                    matched,
                    because,
                    effect: rule.effect.clone(),
                }
            })
            .collect()
    }

    /// Evaluate every rule against one request.
    pub fn evaluate(&self, facts: &Facts<'_>, identity: &Identity, signals: &Signals) -> Outcome {
        let mut out = Outcome::default();
        if self.rules.is_empty() {
            return out;
        }
        let normalized = path::normalize(facts.path);
        let query_decoded = if self.reads_query {
            facts.query.and_then(path::decode_query)
        } else {
            None
        };
        let input = Input {
            facts,
            identity,
            signals,
            path: &normalized.path,
            escaped_root: normalized.escaped_root,
            query_decoded: query_decoded.as_deref(),
        };
        for rule in &self.rules {
            if !rule.when.matches(&input) {
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
        out
    }
}
