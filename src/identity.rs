//! Identity stage: who the credentials on a request say it is, after
//! verification. Nothing here trusts a claim it has not verified.

use std::sync::Arc;

use crate::facts::Facts;
use crate::verdict::Class;

/// What the credentials on a request established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Identity {
    /// No credential was presented.
    #[default]
    Anonymous,
    /// A verified person's account.
    User {
        /// The verified subject (`sub` or the configured claim).
        subject: Arc<str>,
        /// Whether the account's plan is paid.
        tier: Tier,
    },
    /// A verified machine client (API key, client-credentials token).
    Service {
        /// The verified client id or key owner.
        client_id: Arc<str>,
    },
    /// A credential was presented and failed verification.
    Invalid {
        /// Why it failed, in a bounded vocabulary.
        reason: InvalidReason,
    },
}

/// The plan of a verified account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// A free plan: `registered_user`.
    Free,
    /// A paid plan or entitlement: `paying_customer`.
    Paying,
}

/// Why a presented credential did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidReason {
    /// Not parseable as the credential it claims to be.
    Malformed,
    /// The signature or key hash does not match.
    BadSignature,
    /// No configured key can check it.
    UnknownKey,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    /// Issued by an issuer that is not configured, or for another audience.
    WrongIssuer,
}

impl Identity {
    /// The class this identity earns on its own, before any rule speaks.
    pub fn class(&self) -> Class {
        match self {
            Identity::Anonymous | Identity::Invalid { .. } => Class::PublicVisitor,
            Identity::User {
                tier: Tier::Free, ..
            } => Class::RegisteredUser,
            Identity::User {
                tier: Tier::Paying, ..
            } => Class::PayingCustomer,
            Identity::Service { .. } => Class::ServiceClient,
        }
    }

    /// The verified subject or client id, if any.
    pub fn subject(&self) -> Option<&Arc<str>> {
        match self {
            Identity::User { subject, .. } => Some(subject),
            Identity::Service { client_id } => Some(client_id),
            Identity::Anonymous | Identity::Invalid { .. } => None,
        }
    }
}

/// The configured credential verifiers. None are configured yet, so every
/// request is anonymous; JWT, API-key and session sources plug in here.
#[derive(Debug, Default)]
pub struct IdentityStage {
    _private: (),
}

impl IdentityStage {
    /// Verify the credentials a request carries.
    pub fn identify(&self, _facts: &Facts<'_>) -> Identity {
        Identity::Anonymous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_map_to_their_classes() {
        let subject: Arc<str> = Arc::from("u1");
        assert_eq!(Identity::Anonymous.class(), Class::PublicVisitor);
        assert_eq!(
            Identity::Invalid {
                reason: InvalidReason::BadSignature
            }
            .class(),
            Class::PublicVisitor
        );
        let free = Identity::User {
            subject: subject.clone(),
            tier: Tier::Free,
        };
        assert_eq!(free.class(), Class::RegisteredUser);
        assert_eq!(free.subject(), Some(&subject));
        let paying = Identity::User {
            subject: subject.clone(),
            tier: Tier::Paying,
        };
        assert_eq!(paying.class(), Class::PayingCustomer);
        let service = Identity::Service {
            client_id: subject.clone(),
        };
        assert_eq!(service.class(), Class::ServiceClient);
        assert_eq!(service.subject(), Some(&subject));
    }
}
