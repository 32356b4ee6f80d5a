//! Replays of small logs through a real classifier.

use super::*;
use crate::classify::Classifier;
use crate::config::Config;

fn classifier(rules: &str) -> (Classifier, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), rules).unwrap();
    let mut config = Config::parse("rules = [\"r.toml\"]", "test").unwrap();
    config.origin.dir = dir.path().to_owned();
    (Classifier::from_config(&config).unwrap(), dir)
}

#[test]
fn long_lines_are_skipped_without_being_kept() {
    let mut input: &[u8] = b"short\nmuch longer than ten bytes\n\nlast";
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    while let Some(too_long) = read_line(&mut input, &mut buf, 10).unwrap() {
        seen.push((too_long, String::from_utf8_lossy(&buf).into_owned()));
    }
    assert_eq!(
        seen,
        [
            (false, "short\n".to_owned()),
            (true, String::new()),
            (false, "\n".to_owned()),
            (false, "last".to_owned()),
        ]
    );
}

#[test]
fn statuses_in_the_log_feed_the_client_state() {
    let (c, _dir) = classifier(
        "[[rule]]\nname = \"walker\"\nwhen.signal = { name = \"status_404_60s\", ge = 3 }\nscore = 100\n",
    );
    let mut log = String::new();
    for i in 0..5 {
        log.push_str(&format!(
            "{{\"ts\": {}, \"ip\": \"192.0.2.1\", \"method\": \"GET\", \"path\": \"/x{i}\", \"status\": 404}}\n",
            1_764_000_000 + i
        ));
    }
    let mut out = Vec::new();
    let report = run(&c, None, &mut log.as_bytes(), None, Some(&mut out)).unwrap();
    assert_eq!(report.requests, 5);
    let classes: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["class"].to_string())
        .collect();
    // The fourth request sees three 404s answered before it.
    assert_eq!(classes[2], "\"public_visitor\"");
    assert_eq!(classes[3], "\"malicious_bot\"");
}

#[test]
fn top_clients_stay_bounded_and_find_the_heavy_one() {
    let (c, _dir) = classifier("");
    let mut log = String::new();
    for i in 0..5_000u32 {
        let ip = if i % 5 == 0 {
            "198.51.100.1".to_owned()
        } else {
            format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
        };
        log.push_str(&format!(
            "{{\"ts\": {}, \"ip\": \"{ip}\", \"method\": \"GET\", \"path\": \"/\"}}\n",
            1_764_000_000 + i
        ));
    }
    let report = run(&c, None, &mut log.as_bytes(), None, None).unwrap();
    let top = report.top_clients(crate::verdict::Class::PublicVisitor, 1);
    assert_eq!(
        top[0].0,
        "198.51.100.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert!(top[0].1 >= 1_000);
}
