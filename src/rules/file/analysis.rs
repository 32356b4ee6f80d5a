//! Warnings about rules that are valid but cannot do what they seem to:
//! effects that never take effect, and conditions written twice.

use std::sync::Arc;

use crate::config::{Diagnostic, Severity};
use crate::crawlers::Status;
use crate::rules::{Condition, Effect, Mode};

/// What is known about a loaded rule, to judge the rules after it.
pub(super) struct Seen {
    pub(super) name: Arc<str>,
    /// `file:line` of its name.
    pub(super) place: String,
    /// Where to report about it.
    pub(super) at: Diagnostic,
    /// Its conditions in canonical form (see [`canonical`]).
    pub(super) when: String,
    /// Whether it matches every request.
    pub(super) always: bool,
    pub(super) effect: Effect,
    pub(super) mode: Mode,
    /// Whether it tests a crawler claim other than `none`.
    pub(super) reads_crawler: bool,
}

/// How rules can be dead in our evaluation model, where every rule is
/// evaluated, scores add up, and the *first* matching enforced rule that
/// names a class (or an action) decides it. An enforced rule that matches
/// every request (no `when`, or one that always holds) and names a class is
/// *terminal for the class*: no later rule's `class` can ever take effect;
/// likewise for the action. A later rule is dead when everything it does is
/// so fixed: no score (a score still adds to `x-usher-score`), and a class
/// and action, where it names them, fixed before it. Shadow rules change
/// nothing by design and are neither judged nor counted here.
#[derive(Default)]
pub(super) struct Analysis {
    /// The terminal rule for the class, and for the action: name and place.
    class_fixed: Option<(Arc<str>, String)>,
    action_fixed: Option<(Arc<str>, String)>,
}

impl Analysis {
    /// Warnings about `rule` given the enforced rules before it; then
    /// record what it fixes.
    pub(super) fn judge(&mut self, rule: &Seen, earlier: &[Seen]) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        if rule.mode == Mode::Shadow {
            return out;
        }
        let e = &rule.effect;
        let class_dead = e
            .class
            .is_some()
            .then_some(())
            .and(self.class_fixed.as_ref());
        let action_dead = e
            .action
            .is_some()
            .then_some(())
            .and(self.action_fixed.as_ref());
        let fully_dead = e.score == 0
            && (e.class.is_none() || class_dead.is_some())
            && (e.action.is_none() || action_dead.is_some());
        let say = |what: &str, (name, place): &(Arc<str>, String)| {
            format!("rule `{name}` ({place}) matches every request and sets the {what} first")
        };
        if fully_dead {
            let why: Vec<String> = [("class", class_dead), ("action", action_dead)]
                .into_iter()
                .filter_map(|(what, by)| by.map(|by| say(what, by)))
                .collect();
            out.push(warning_at(
                &rule.at,
                format!("can never change a verdict: {}", why.join("; ")),
            ));
        } else {
            for (what, by) in [("class", class_dead), ("action", action_dead)] {
                if let Some(by) = by {
                    out.push(warning_at(
                        &rule.at,
                        format!("its `{what}` never takes effect: {}", say(what, by)),
                    ));
                }
            }
        }
        let twin = earlier
            .iter()
            .find(|x| x.mode == Mode::Enforce && x.when == rule.when);
        if let (Some(twin), false) = (twin, fully_dead) {
            out.push(warning_at(
                &rule.at,
                format!(
                    "same conditions as rule `{}` ({}); merge them, or tell them apart",
                    twin.name, twin.place
                ),
            ));
        }
        if rule.always {
            let fixed = || (rule.name.clone(), rule.place.clone());
            if e.class.is_some() && self.class_fixed.is_none() {
                self.class_fixed = Some(fixed());
            }
            if e.action.is_some() && self.action_fixed.is_none() {
                self.action_fixed = Some(fixed());
            }
        }
        out
    }
}

/// The same place and rule as `at`, with another message, as a warning.
pub(super) fn warning_at(at: &Diagnostic, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        message,
        ..at.clone()
    }
}

/// A canonical text for a `when` table: two rules whose conditions are
/// written differently but mean the same get the same text. Keys sorted;
/// lists (every list in a `when` is a set: any of, all of, none of) sorted
/// and without repeats, and a one-item list the same as its item (as a
/// single value is accepted wherever a list is); integers as the numbers
/// they are (`ge = 10` is `ge = 10.0`).
pub(super) fn canonical(value: &toml::Value) -> String {
    use toml::Value;
    match value {
        Value::Table(table) => {
            let mut entries: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{k:?}={}", canonical(v)))
                .collect();
            entries.sort();
            format!("{{{}}}", entries.join(","))
        }
        Value::Array(items) => {
            let mut items: Vec<String> = items.iter().map(canonical).collect();
            items.sort();
            items.dedup();
            match items.len() {
                1 => items.remove(0),
                _ => format!("[{}]", items.join(",")),
            }
        }
        #[allow(clippy::cast_precision_loss)]
        Value::Integer(i) => format!("{}", *i as f64),
        Value::Float(f) => format!("{f}"),
        Value::String(s) => format!("{s:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
    }
}

/// Whether a condition holds for every request.
pub(super) fn always(c: &Condition) -> bool {
    match c {
        Condition::Always => true,
        Condition::All(list) => list.iter().all(always),
        Condition::Any(list) => list.iter().any(always),
        _ => false,
    }
}

/// Whether a condition tests for a crawler claim (other than `none`).
pub(super) fn reads_crawler(c: &Condition) -> bool {
    match c {
        Condition::Crawler(statuses) => statuses.iter().any(|s| *s != Status::None),
        Condition::All(list) | Condition::Any(list) => list.iter().any(reads_crawler),
        Condition::Not(c) => reads_crawler(c),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Action, Class};

    /// The canonical form of a rule's `when`, written as TOML.
    fn when(text: &str) -> String {
        let table: toml::Table = text.parse().unwrap();
        canonical(
            table
                .get("when")
                .unwrap_or(&toml::Value::Table(toml::Table::new())),
        )
    }

    #[test]
    fn canonical_when_ignores_spelling_but_not_meaning() {
        let same = [
            (
                "when = { path_prefix = [\"/z\"], method = [\"GET\", \"POST\"] }",
                "when.method = [\"POST\", \"GET\", \"GET\"]\nwhen.path_prefix = \"/z\"",
            ),
            (
                "when.signal = { name = \"rate_1s\", ge = 10 }",
                "[when.signal]\nge = 10.0\nname = \"rate_1s\"",
            ),
            (
                "when.any = [{ path_prefix = \"/a\" }, { method = \"POST\" }]",
                "when.any = [{ method = [\"POST\"] }, { path_prefix = \"/a\" }]",
            ),
            ("", "when = {}"),
        ];
        for (a, b) in same {
            assert_eq!(when(a), when(b), "{a}\n  vs\n{b}");
        }
        let different = [
            ("when.path_prefix = \"/a\"", "when.path_prefix = \"/b\""),
            (
                "when.path_prefix = [\"/a\", \"/b\"]",
                "when.path_prefix = \"/a\"",
            ),
            (
                "when.signal = { name = \"rate_1s\", ge = 10 }",
                "when.signal = { name = \"rate_1s\", gt = 10 }",
            ),
            (
                "when.any = [{ path_prefix = \"/a\" }, { method = \"POST\" }]",
                "when.all = [{ path_prefix = \"/a\" }, { method = \"POST\" }]",
            ),
            ("when.path = '^/a'", "when.path_prefix = '^/a'"),
            (
                "when.user_agent_missing = true",
                "when.user_agent_missing = false",
            ),
            ("", "when.method = \"GET\""),
        ];
        for (a, b) in different {
            assert_ne!(when(a), when(b), "{a}\n  vs\n{b}");
        }
    }

    fn seen(name: &str, line: usize, always: bool, effect: Effect, mode: Mode) -> Seen {
        Seen {
            name: Arc::from(name),
            place: format!("r.toml:{line}"),
            at: Diagnostic {
                severity: Severity::Warning,
                file: "r.toml".to_owned(),
                line: Some(line),
                column: Some(8),
                rule: Some(name.to_owned()),
                message: String::new(),
            },
            when: if always {
                "{}".to_owned()
            } else {
                format!("{{{name}}}")
            },
            always,
            effect,
            mode,
            reads_crawler: false,
        }
    }

    fn effect(score: i32, class: Option<Class>, action: Option<Action>) -> Effect {
        Effect {
            score,
            class,
            action,
        }
    }

    /// The warnings for each rule in turn, as `name: message`.
    fn judge_all(rules: Vec<Seen>) -> Vec<String> {
        let mut analysis = Analysis::default();
        let mut earlier: Vec<Seen> = Vec::new();
        let mut out = Vec::new();
        for rule in rules {
            for w in analysis.judge(&rule, &earlier) {
                out.push(format!("{}: {}", rule.name, w.message));
            }
            earlier.push(rule);
        }
        out
    }

    #[test]
    fn only_effects_fixed_by_an_earlier_unconditional_rule_are_dead() {
        let bot = Some(Class::MaliciousBot);
        let deny = Some(Action::Deny);
        let w = judge_all(vec![
            seen("scored", 1, false, effect(5, bot, None), Mode::Enforce),
            // Conditional rules fix nothing.
            seen(
                "after-scored",
                2,
                false,
                effect(0, bot, None),
                Mode::Enforce,
            ),
            seen("catch-all", 3, true, effect(0, bot, None), Mode::Enforce),
            seen("class-only", 4, false, effect(0, bot, None), Mode::Enforce),
            seen(
                "class-and-score",
                5,
                false,
                effect(10, bot, None),
                Mode::Enforce,
            ),
            seen(
                "class-and-action",
                6,
                false,
                effect(0, bot, deny),
                Mode::Enforce,
            ),
            seen(
                "action-only",
                7,
                false,
                effect(0, None, deny),
                Mode::Enforce,
            ),
            seen("shadow", 8, false, effect(0, bot, None), Mode::Shadow),
        ]);
        assert_eq!(
            w,
            [
                "class-only: can never change a verdict: rule `catch-all` (r.toml:3) matches every request and sets the class first",
                "class-and-score: its `class` never takes effect: rule `catch-all` (r.toml:3) matches every request and sets the class first",
                "class-and-action: its `class` never takes effect: rule `catch-all` (r.toml:3) matches every request and sets the class first",
            ]
        );
    }

    #[test]
    fn a_shadow_or_unconditional_scoring_rule_fixes_nothing() {
        let bot = Some(Class::MaliciousBot);
        let w = judge_all(vec![
            seen(
                "trial",
                1,
                true,
                effect(0, bot, Some(Action::Deny)),
                Mode::Shadow,
            ),
            seen("base-score", 2, true, effect(10, None, None), Mode::Enforce),
            seen(
                "later",
                3,
                false,
                effect(0, bot, Some(Action::Deny)),
                Mode::Enforce,
            ),
        ]);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn the_same_conditions_twice_are_reported_once_per_later_rule() {
        let mut a = seen("a", 1, false, effect(5, None, None), Mode::Enforce);
        let mut b = seen("b", 2, false, effect(7, None, None), Mode::Enforce);
        let mut c = seen(
            "c",
            3,
            false,
            effect(0, None, Some(Action::Deny)),
            Mode::Shadow,
        );
        for s in [&mut a, &mut b, &mut c] {
            s.when = "{\"path_prefix\"=\"/z\"}".to_owned();
        }
        let w = judge_all(vec![a, b, c]);
        assert_eq!(
            w,
            ["b: same conditions as rule `a` (r.toml:1); merge them, or tell them apart"]
        );
    }
}
