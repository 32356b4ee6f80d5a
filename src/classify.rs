//! The classification pipeline: facts → identity → signals → rules →
//! verdict. One entry point shared by every front door (serve, and later
//! replay and explain), so they can never disagree.

use crate::config::identity::OnInvalid;
use crate::config::{Config, ConfigError, Diagnostic, Diagnostics};
use crate::crawlers::Crawlers;
use crate::facts::Facts;
use crate::identity::{Identity, IdentityStage};
use crate::limits::Limits;
use crate::rules::{Outcome, RuleSet};
use crate::signals::{Signals, SignalsStage};
use crate::state::ClientStore;
use crate::state::shared::Shared;
use crate::verdict::{Action, Class, Verdict};
use std::sync::Arc;

/// Everything the pipeline learned about one request, for callers that
/// want more than the verdict (explain, shadow-rule metrics).
#[derive(Debug)]
pub struct Classification {
    /// The identity stage's result.
    pub identity: Identity,
    /// The signals stage's result.
    pub signals: Signals,
    /// The rules stage's result.
    pub outcome: Outcome,
    /// The final verdict.
    pub verdict: Verdict,
}

/// The compiled pipeline.
#[derive(Debug, Default)]
pub struct Classifier {
    identity: IdentityStage,
    signals: SignalsStage,
    rules: RuleSet,
    limits: Limits,
    crawlers: Crawlers,
    warnings: Vec<Diagnostic>,
    /// Every file read to build it, besides the config file itself.
    sources: Vec<std::path::PathBuf>,
}

impl Classifier {
    /// A pipeline with the given rules and no credential sources.
    pub fn new(rules: RuleSet) -> Self {
        Self::with_identity(IdentityStage::default(), rules)
    }

    /// A pipeline with the given credential sources and rules.
    pub fn with_identity(identity: IdentityStage, rules: RuleSet) -> Self {
        Classifier {
            identity,
            signals: SignalsStage::default(),
            rules,
            limits: Limits::default(),
            crawlers: Crawlers::default(),
            warnings: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Compile the pipeline a config describes, loading key material.
    /// Key files and rule files are all checked before giving up, so the
    /// error ([`ConfigError::Diagnostics`]) lists every problem, with the
    /// warnings found on the way; without errors the warnings are kept
    /// (see [`Classifier::warnings`]).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Classifier::build(config, None)
    }

    /// Compile the pipeline that replaces `previous` on a reload: every
    /// file is read and checked afresh, while what usher has learned
    /// carries over — the client state (behaviour signals), the quotas
    /// clients have spent, crawler DNS answers and counts, fetched JWKS and
    /// cached sessions (see each stage's `after`). The client state keeps
    /// the capacity it started with.
    pub fn reload(config: &Config, previous: &Classifier) -> Result<Self, ConfigError> {
        Classifier::build(config, Some(previous))
    }

    fn build(config: &Config, previous: Option<&Classifier>) -> Result<Self, ConfigError> {
        let mut found = Diagnostics::new();
        found.extend(config.warnings());
        let identity = IdentityStage::after(
            &config.identity,
            &config.origin,
            previous.map(|p| &p.identity),
        )
        .map_err(|e| found.absorb(e))
        .ok();
        let loaded = crate::rules::file::load_all(&config.rules, &config.origin.dir)
            .map_err(|e| found.absorb(e))
            .ok();
        let (Some(identity), Some(mut loaded)) = (identity, loaded) else {
            return Err(found.into_error());
        };
        found.extend(std::mem::take(&mut loaded.warnings));
        let warnings = found.into_result()?;
        let signals = match previous {
            Some(p) => p.signals.clone(),
            None => {
                let stage = SignalsStage::new(Arc::new(ClientStore::new(config.state.capacity)));
                match config
                    .state
                    .shared(&config.origin.dir, &config.origin.file)?
                {
                    Some(shared) => {
                        stage.with_shared(Arc::new(Shared::new(shared, config.state.capacity)))
                    }
                    None => stage,
                }
            }
        };
        let capacity = signals.state().capacity();
        let crawlers = Crawlers::after(
            loaded.crawlers,
            &config.crawlers,
            previous.map(|p| &p.crawlers),
        )
        .map_err(|e| ConfigError::Inconsistent {
            file: config.origin.file.clone(),
            message: e.to_string(),
        })?;
        let mut sources = config.identity.files(&config.origin.dir);
        sources.extend(loaded.files);
        Ok(Classifier {
            identity,
            signals,
            rules: loaded.rules,
            limits: Limits::after(&loaded.limits, capacity, previous.map(|p| &p.limits)),
            crawlers,
            warnings,
            sources,
        })
    }

    /// What the config, key and rule files hold that is valid but probably
    /// not meant; `serve` logs them at startup, `check` prints them.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Every file read to build it besides the config file: key files,
    /// rule files and the address lists they name.
    pub fn sources(&self) -> &[std::path::PathBuf] {
        &self.sources
    }

    /// How long the `tarpit` action holds a request.
    pub fn tarpit_delay(&self) -> std::time::Duration {
        self.rules.tarpit_delay()
    }

    /// The per-class quotas the `limit` action enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The signals stage (for its client state).
    pub fn signals(&self) -> &SignalsStage {
        &self.signals
    }

    /// The same pipeline made repeatable, for replays: estimates that are
    /// keyed randomly live (the distinct-paths sketch) use a fixed key, so
    /// one log always gives the same answers, under either config of a
    /// comparison.
    pub fn repeatable(mut self) -> Self {
        self.signals = self.signals.with_fixed_key();
        self
    }

    /// The rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The crawlers whose claims are verified.
    pub fn crawlers(&self) -> &Crawlers {
        &self.crawlers
    }

    /// The credential stage (for its background tasks).
    pub fn identity(&self) -> &IdentityStage {
        &self.identity
    }

    /// Run every stage on one request.
    pub fn classify(&self, facts: &Facts<'_>) -> Classification {
        let identity = self.identity.identify(facts);
        let mut signals = self.signals.observe(facts, &identity);
        signals.crawler = facts
            .crawler
            .unwrap_or_else(|| self.crawlers.check(facts.user_agent, facts.client_ip));
        let mut outcome = self.rules.evaluate(facts, &identity, &signals);
        let mut verdict = decide(&identity, &mut outcome, &self.rules);
        if matches!(identity, Identity::Invalid { .. })
            && self.identity.on_invalid() == OnInvalid::Deny
        {
            verdict.action = Action::Deny;
        }
        if verdict.class == Class::MaliciousBot
            && self.signals.shared().is_some()
            && self.judged_alone(facts, &identity, &signals)
        {
            self.signals.share_verdict(facts, &identity);
        }
        Classification {
            identity,
            signals,
            outcome,
            verdict,
        }
    }
}

impl Classifier {
    /// Whether the rules call the client `malicious_bot` without another
    /// replica's verdict: only such a verdict is shared, so a shared one
    /// lapses unless some replica reaches it again on its own. Evaluates
    /// the rules a second time, for clients already judged elsewhere only.
    fn judged_alone(&self, facts: &Facts<'_>, identity: &Identity, signals: &Signals) -> bool {
        if !signals.shared_verdict {
            return true;
        }
        let alone = Signals {
            shared_verdict: false,
            ..signals.clone()
        };
        let mut outcome = self.rules.evaluate(facts, identity, &alone);
        decide(identity, &mut outcome, &self.rules).class == Class::MaliciousBot
    }
}

/// An explicit class from a rule wins; otherwise a score at or over the
/// threshold makes `malicious_bot`; otherwise the identity decides.
/// The action is the first rule's that chose one, else the class's.
fn decide(identity: &Identity, outcome: &mut Outcome, rules: &RuleSet) -> Verdict {
    let class = match outcome.class {
        Some(class) => class,
        None if outcome.score >= rules.bot_threshold() => Class::MaliciousBot,
        None => identity.class(),
    };
    Verdict {
        class,
        score: outcome.score,
        reasons: std::mem::take(&mut outcome.reasons),
        action: outcome.action.unwrap_or_else(|| rules.class_action(class)),
        subject: identity.subject().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Condition, Effect, Mode, Rule};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::time::SystemTime;

    fn rule(name: &str, when: Condition, effect: Effect, mode: Mode) -> Rule {
        Rule {
            name: Arc::from(name),
            when,
            effect,
            mode,
        }
    }

    fn run(classifier: &Classifier, path: &str, ua: Option<&str>) -> Classification {
        let mut req = http::Request::builder().uri(path);
        if let Some(ua) = ua {
            req = req.header("user-agent", ua);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        classifier.classify(&Facts::new(&parts, ip, ip, SystemTime::UNIX_EPOCH))
    }

    #[test]
    fn a_reload_reads_every_file_afresh_and_keeps_what_was_learned() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("blocked.txt", "192.0.2.0/24\n");
        write(
            "a.toml",
            "[[rule]]\nname = \"listed\"\nwhen = { any = [{ ip_file = \"blocked.txt\" }] }\nscore = 1\n",
        );
        write("usher.toml", "rules = [\"a.toml\"]\n");
        let config = Config::load(&dir.path().join("usher.toml")).unwrap();
        let before = Classifier::from_config(&config).unwrap();
        assert_eq!(
            before.sources(),
            [dir.path().join("a.toml"), dir.path().join("blocked.txt")]
        );

        write(
            "a.toml",
            "[[rule]]\nname = \"renamed\"\nwhen = { path = \"/x\" }\nscore = 1\n",
        );
        let after = Classifier::reload(&config, &before).unwrap();
        assert_eq!(&*after.rules().rules()[0].name, "renamed");
        assert!(Arc::ptr_eq(
            before.signals().state(),
            after.signals().state()
        ));
        assert!(std::ptr::eq(
            before.crawlers().dns_counts(),
            after.crawlers().dns_counts()
        ));
    }

    #[test]
    fn no_rules_no_credentials_is_a_public_visitor() {
        let c = run(&Classifier::default(), "/", Some("Mozilla/5.0"));
        assert_eq!(c.verdict.class, Class::PublicVisitor);
        assert_eq!(c.verdict.action, Action::Forward);
        assert_eq!(c.verdict.score, 0);
        assert!(c.verdict.reasons.is_empty());
        assert_eq!(c.verdict.subject, None);
    }

    #[test]
    fn score_threshold_explicit_class_and_shadow() {
        let rules = RuleSet::new(
            vec![
                rule(
                    "no-ua",
                    Condition::UserAgentMissing,
                    Effect {
                        score: 60,
                        ..Effect::default()
                    },
                    Mode::Enforce,
                ),
                rule(
                    "admin-probe",
                    Condition::PathPrefix(vec!["/admin".into()]),
                    Effect {
                        score: 50,
                        action: Some(Action::Deny),
                        ..Effect::default()
                    },
                    Mode::Enforce,
                ),
                rule(
                    "partner",
                    Condition::PathPrefix(vec!["/partner".into()]),
                    Effect {
                        class: Some(Class::ServiceClient),
                        ..Effect::default()
                    },
                    Mode::Enforce,
                ),
                rule(
                    "trial",
                    Condition::Always,
                    Effect {
                        score: 1000,
                        action: Some(Action::Tarpit),
                        ..Effect::default()
                    },
                    Mode::Shadow,
                ),
            ],
            100,
        );
        let classifier = Classifier::new(rules);

        let c = run(&classifier, "/admin/x", None);
        assert_eq!(c.verdict.class, Class::MaliciousBot);
        assert_eq!(c.verdict.score, 110);
        assert_eq!(c.verdict.action, Action::Deny);
        let names: Vec<&str> = c.verdict.reasons.iter().map(|r| &**r).collect();
        assert_eq!(names, ["no-ua", "admin-probe"]);
        assert_eq!(&*c.outcome.shadow[0], "trial");

        let c = run(&classifier, "/admin/x", Some("Mozilla/5.0"));
        assert_eq!(c.verdict.class, Class::PublicVisitor, "50 < 100");
        assert_eq!(c.verdict.action, Action::Deny);

        let c = run(&classifier, "/partner", None);
        assert_eq!(c.verdict.class, Class::ServiceClient, "explicit class wins");
        assert_eq!(
            c.verdict.action,
            Action::Forward,
            "shadow rule changes nothing"
        );
    }
}
