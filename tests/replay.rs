//! End-to-end: `usher replay` on fixture logs in both formats, through the
//! real binary and the shipped rules.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/logs/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn shipped_config(dir: &std::path::Path, extra_rules: Option<&str>) -> std::path::PathBuf {
    let mut rules = format!("\"{}/rules/*.toml\"", env!("CARGO_MANIFEST_DIR"));
    if let Some(text) = extra_rules {
        std::fs::write(dir.join("extra.toml"), text).unwrap();
        rules.push_str(", \"extra.toml\"");
    }
    let path = dir.join(if extra_rules.is_some() {
        "b.toml"
    } else {
        "a.toml"
    });
    std::fs::write(&path, format!("rules = [{rules}]\n")).unwrap();
    path
}

fn replay(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(common::usher_bin())
        .arg("replay")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Run replay, which must succeed; its stdout.
fn replay_ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    let o = replay(args, stdin);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

#[test]
fn a_combined_log_finds_the_scraper_by_its_timestamps_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config(dir.path(), None);
    let out = dir.path().join("verdicts.jsonl");
    let stdout = replay_ok(
        &[
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            &fixture("access.log"),
        ],
        None,
    );
    assert!(
        stdout.contains("333 requests replayed, 2 malformed lines"),
        "{stdout}"
    );
    assert!(stdout.contains("malformed lines: 6, 41"), "{stdout}");

    let verdicts: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), 333, "one verdict per request");
    let lines: Vec<u64> = verdicts
        .iter()
        .map(|v| v["line"].as_u64().unwrap())
        .collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "input order");
    for key in [
        "ts", "ip", "method", "path", "class", "score", "reasons", "action",
    ] {
        assert!(verdicts[0].get(key).is_some(), "{key}");
    }
    let of = |ip: &str| -> Vec<&Value> { verdicts.iter().filter(|v| v["ip"] == ip).collect() };

    // The scraper sends a browser's user agent: only its pace, read from
    // the log's timestamps, gives it away — after its first seconds.
    let scraper = of("203.0.113.66");
    assert_eq!(scraper.len(), 300);
    assert_eq!(scraper[0]["class"], "public_visitor");
    let last = scraper.last().unwrap();
    assert_eq!(last["class"], "malicious_bot");
    assert!(
        last["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "scraping-burst")
    );
    // The person at a reading pace never is; and a combined log does not
    // record Accept-Language, so its absence is not held against anyone.
    for v in of("198.51.100.7") {
        assert_eq!(v["class"], "public_visitor", "{v}");
        assert_eq!(v["reasons"], serde_json::json!([]), "{v}");
    }
    assert_eq!(of("192.0.2.9")[0]["action"], "deny");
    assert_eq!(of("192.0.2.10")[0]["class"], "malicious_bot");
}

#[test]
fn json_lines_from_stdin_find_credential_stuffing_through_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config(dir.path(), None);
    let log = std::fs::read(fixture("requests.jsonl")).unwrap();
    let stdout = replay_ok(
        &[
            "--config",
            config.to_str().unwrap(),
            "--format",
            "jsonl",
            "-",
        ],
        Some(&log),
    );
    assert!(
        stdout.contains("42 requests replayed, 1 malformed lines"),
        "{stdout}"
    );
    assert!(stdout.contains("line 4:"), "{stdout}");
    // The recorded 401s feed the client state as the application's answers
    // would: the repeated failed logins turn the client into a bot.
    let bot_row = stdout
        .lines()
        .find(|l| l.starts_with("  malicious_bot"))
        .unwrap_or_default();
    assert!(bot_row.contains("203.0.113.99"), "{stdout}");
    assert!(stdout.contains("login-brute-force"), "{stdout}");
}

#[test]
fn compare_reports_what_a_rule_change_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let a = shipped_config(dir.path(), None);
    let b = shipped_config(
        dir.path(),
        Some(
            "[[rule]]\nname = \"no-libraries\"\nwhen.user_agent = '^python-requests/'\nclass = \"malicious_bot\"\naction = \"deny\"\n",
        ),
    );
    let stdout = replay_ok(
        &[
            "--config",
            a.to_str().unwrap(),
            "--compare",
            b.to_str().unwrap(),
            &fixture("access.log"),
        ],
        None,
    );
    assert!(
        stdout.contains("compared: 1 requests change class or action"),
        "{stdout}"
    );
    assert!(
        stdout.contains("public_visitor (forward) → malicious_bot (deny): 1 requests"),
        "{stdout}"
    );
    assert!(stdout.contains("+no-libraries"), "{stdout}");
    assert!(stdout.contains("192.0.2.11 GET /api/items"), "{stdout}");
}

#[test]
fn unreadable_input_and_bad_config_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config(dir.path(), None);
    let o = replay(
        &["--config", config.to_str().unwrap(), "/nonexistent.log"],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(dir.path().join("bad.toml"), "rules = 3\n").unwrap();
    let o = replay(
        &[
            "--config",
            dir.path().join("bad.toml").to_str().unwrap(),
            &fixture("access.log"),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.toml:1"));
    // Hostile bytes never abort a run.
    let mut junk = b"\xff\xfe\x00garbage\n{\"ts\": 1}\n".to_vec();
    junk.extend(std::iter::repeat_n(b'a', 200_000));
    junk.extend_from_slice(b"\n[[[[\n");
    let o = replay(&["--config", config.to_str().unwrap(), "-"], Some(&junk));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(
        stdout.contains("0 requests replayed, 4 malformed lines"),
        "{stdout}"
    );
}

#[test]
fn the_same_log_gives_the_same_answers_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config(dir.path(), None);
    let run = |n: usize| {
        let out = dir.path().join(format!("v{n}.jsonl"));
        let o = replay(
            &[
                "--config",
                config.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                &fixture("access.log"),
            ],
            None,
        );
        assert!(o.status.success());
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            std::fs::read_to_string(out).unwrap(),
        )
    };
    let first = run(1);
    assert_eq!(first, run(2), "replays are repeatable");
    // Fields in the documented order.
    assert!(
        first.1.starts_with("{\"line\":1,\"ts\":"),
        "{}",
        &first.1[..80]
    );
}
