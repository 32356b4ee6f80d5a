//! Accuracy of the shipped rules on labelled user agents
//! (`../shared/data/useragents/`): bot recall on the crawler corpus and the
//! false-positive rate on real browsers. A request counts as flagged when
//! the rules score it or label it `malicious_bot`. Printed, and held to
//! floors so that a rule change cannot quietly make things worse.

use std::path::PathBuf;
use std::time::SystemTime;

use usher::config::Config;
use usher::facts::Facts;
use usher::verdict::Class;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/useragents")
}

fn crawler_instances() -> Vec<String> {
    let text = std::fs::read_to_string(data_dir().join("crawler-user-agents.json")).unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    entries
        .iter()
        .filter_map(|e| e["instances"].as_array())
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_owned))
        .collect()
}

fn browser_agents() -> Vec<String> {
    let text = std::fs::read_to_string(data_dir().join("browsers.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .map(|ua| ua.trim().trim_matches(['\'', '"']).to_owned())
        .filter(|ua| !ua.is_empty())
        .collect()
}

#[test]
fn shipped_rules_recall_and_false_positives() {
    if !data_dir().exists() {
        eprintln!(
            "SKIPPED: no {} here (it sits beside the repository); accuracy not measured",
            data_dir().display()
        );
        return;
    }
    let mut config = Config::parse("rules = [\"rules/*.toml\"]", "accuracy").unwrap();
    config.origin.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let classifier = usher::classify::Classifier::from_config(&config).unwrap();
    let flagged = |ua: &str, i: usize| {
        let Ok(req) = http::Request::builder()
            .uri("/")
            .header("user-agent", ua)
            .header("accept", "text/html,application/xhtml+xml")
            .header("accept-language", "en-US,en;q=0.9")
            .body(())
        else {
            return false;
        };
        let (parts, ()) = req.into_parts();
        // Each agent from its own address, so rates do not mix.
        let ip = std::net::IpAddr::V4((0x0a00_0000u32 + i as u32).into());
        let v = classifier
            .classify(&Facts::new(&parts, ip, ip, SystemTime::UNIX_EPOCH))
            .verdict;
        v.score > 0 || v.class == Class::MaliciousBot
    };
    let bots = crawler_instances();
    let browsers = browser_agents();
    assert!(
        bots.len() > 1000 && browsers.len() > 400,
        "{} bots, {} browsers",
        bots.len(),
        browsers.len()
    );
    let caught = bots
        .iter()
        .enumerate()
        .filter(|(i, ua)| flagged(ua, *i))
        .count();
    let false_positives: Vec<&String> = browsers
        .iter()
        .enumerate()
        .filter(|(i, ua)| flagged(ua, 1_000_000 + *i))
        .map(|(_, ua)| ua)
        .collect();
    let recall = caught as f64 / bots.len() as f64;
    let fp_rate = false_positives.len() as f64 / browsers.len() as f64;
    eprintln!(
        "bot recall {:.1}% ({caught}/{}), human false positives {:.2}% ({}/{})",
        recall * 100.0,
        bots.len(),
        fp_rate * 100.0,
        false_positives.len(),
        browsers.len()
    );
    for ua in false_positives.iter().take(10) {
        eprintln!("  flagged browser: {ua}");
    }
    // Floors, just under what the shipped rules reach (98.5% recall, no
    // browser flagged): real browsers are left alone (at most 0.1%), and
    // recall may only go up. `declared-bot` catches crawlers by family and
    // shape, not by name; what it misses are mostly bots that look like a
    // desktop browser with a product name appended, and nine agents that
    // the browser fixture lists too.
    assert!(
        fp_rate <= 0.001,
        "{} browsers flagged",
        false_positives.len()
    );
    assert!(recall >= 0.98, "bot recall fell to {:.1}%", recall * 100.0);
}
