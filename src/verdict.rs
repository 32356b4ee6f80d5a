//! The verdict of the pipeline: who is knocking (`Class`), how bot-like the
//! request looks (`score`), which rules said so (`reasons`) and what to do.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The five kinds of traffic usher tells apart, in their canonical spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A person without an account.
    PublicVisitor,
    /// A verified account on a free plan.
    RegisteredUser,
    /// A verified account whose plan is paid.
    PayingCustomer,
    /// Legitimate automation: API keys, client tokens, verified crawlers.
    ServiceClient,
    /// Automation that hides or abuses.
    MaliciousBot,
}

impl Class {
    /// Every class, in a fixed order (also the index of `Class::index`).
    pub const ALL: [Class; 5] = [
        Class::PublicVisitor,
        Class::RegisteredUser,
        Class::PayingCustomer,
        Class::ServiceClient,
        Class::MaliciousBot,
    ];

    /// The canonical name used in config, headers, metrics and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::PublicVisitor => "public_visitor",
            Class::RegisteredUser => "registered_user",
            Class::PayingCustomer => "paying_customer",
            Class::ServiceClient => "service_client",
            Class::MaliciousBot => "malicious_bot",
        }
    }

    /// Position in [`Class::ALL`], for per-class tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the five classes.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown class `{0}`, expected one of public_visitor, registered_user, paying_customer, service_client, malicious_bot"
)]
pub struct UnknownClass(String);

impl FromStr for Class {
    type Err = UnknownClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Class::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownClass(s.to_owned()))
    }
}

/// What usher does with a request once it is classified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Pass it to the upstream with its labels.
    #[default]
    Forward,
    /// Hold it to the class's rate quota (429 with `Retry-After` past it).
    Limit,
    /// Refuse it with 403.
    Deny,
    /// Answer slowly, to waste an abuser's time.
    Tarpit,
}

impl Action {
    /// Every action, in a fixed order (also the index of `Action::index`).
    pub const ALL: [Action; 4] = [Action::Forward, Action::Limit, Action::Deny, Action::Tarpit];

    /// The canonical name used in config, metrics and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Forward => "forward",
            Action::Limit => "limit",
            Action::Deny => "deny",
            Action::Tarpit => "tarpit",
        }
    }

    /// Position in [`Action::ALL`], for per-action tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of classifying one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Who is knocking.
    pub class: Class,
    /// The bot score the rules added up.
    pub score: i32,
    /// Names of the rules that took effect, in evaluation order.
    pub reasons: Vec<Arc<str>>,
    /// What to do with the request.
    pub action: Action,
    /// The verified subject or client id, when a credential verified.
    pub subject: Option<Arc<str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip() {
        for class in Class::ALL {
            assert_eq!(class.as_str().parse::<Class>().unwrap(), class);
            assert_eq!(Class::ALL[class.index()], class);
        }
        assert!("Public_Visitor".parse::<Class>().is_err());
        assert!("".parse::<Class>().is_err());
    }

    #[test]
    fn action_indices_match_table() {
        for action in Action::ALL {
            assert_eq!(Action::ALL[action.index()], action);
        }
    }
}
