//! End-to-end through the library's server with rules built in code: the
//! verdict a rule produces is what the upstream, the client and the
//! metrics see.

mod common;

use std::sync::Arc;

use common::*;
use http::{HeaderName, Request};
use serde_json::Value;
use usher::classify::Classifier;
use usher::config::{AccessLog, Config};
use usher::rules::{Condition, Effect, Mode, Rule, RuleSet};
use usher::server::Server;
use usher::verdict::{Action, Class};

fn rule(name: &str, when: Condition, effect: Effect, mode: Mode) -> Rule {
    Rule {
        name: Arc::from(name),
        when,
        effect,
        mode,
    }
}

async fn start(
    upstream: &Upstream,
    rules: RuleSet,
) -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
) {
    let mut config = Config::parse(&config(upstream, "access_log = \"off\""), "test").unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin = "127.0.0.1:0".parse().unwrap();
    config.access_log = AccessLog::Off;
    let server = Server::bind(config, Classifier::new(rules)).await.unwrap();
    let (proxy, admin) = (server.proxy_addr(), server.admin_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (proxy, admin, stop)
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_verdicts_reach_upstream_client_and_metrics() {
    let up = upstream(echo).await;
    let rules = RuleSet::new(
        vec![
            rule(
                "env-probe",
                Condition::PathPrefix(vec!["/.env".into()]),
                Effect {
                    score: 100,
                    action: Some(Action::Deny),
                    ..Effect::default()
                },
                Mode::Enforce,
            ),
            rule(
                "partner-header",
                Condition::HeaderPresent(vec![HeaderName::from_static("x-partner")]),
                Effect {
                    class: Some(Class::ServiceClient),
                    score: 5,
                    ..Effect::default()
                },
                Mode::Enforce,
            ),
            rule(
                "no-user-agent",
                Condition::UserAgentMissing,
                Effect {
                    score: 7,
                    ..Effect::default()
                },
                Mode::Enforce,
            ),
            rule(
                "trial-deny-everything",
                Condition::Always,
                Effect {
                    action: Some(Action::Deny),
                    class: Some(Class::MaliciousBot),
                    ..Effect::default()
                },
                Mode::Shadow,
            ),
        ],
        100,
    );
    let (proxy, admin, _stop) = start(&up, rules).await;

    // A probe is denied with a body that does not name the rule.
    let req = Request::get(format!("http://{proxy}/.env"))
        .header("user-agent", "x")
        .body(full(""))
        .unwrap();
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, 403);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("env-probe"), "{text}");

    // An explicit class wins; reasons and score reach the upstream.
    let req = Request::get(format!("http://{proxy}/api"))
        .header("x-partner", "acme")
        .header("x-usher-class", "paying_customer")
        .header("x-usher-subject", "forged")
        .body(full(""))
        .unwrap();
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, 200);
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["x-usher-class"][0], "service_client");
    assert_eq!(seen["headers"]["x-usher-score"][0], "12");
    assert_eq!(
        seen["headers"]["x-usher-reasons"][0],
        "partner-header,no-user-agent"
    );
    assert!(
        seen["headers"].get("x-usher-subject").is_none(),
        "forged subject stripped"
    );

    let (_, metrics) = get(&format!("http://{admin}/metrics")).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert_eq!(
        sample(
            &metrics,
            r#"usher_requests_total{action="deny",class="malicious_bot"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_requests_total{action="forward",class="service_client"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_rule_matches_total{mode="shadow",rule="trial-deny-everything"}"#
        ),
        Some(2.0),
        "shadow rules are counted"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_rule_matches_total{mode="enforce",rule="env-probe"}"#
        ),
        Some(1.0)
    );
}
