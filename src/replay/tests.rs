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
fn line_limits_hold_across_small_reads() {
    let text: &[u8] = b"0123456789\n012345678\nabcdefghijk\n\xff\xfe\n0123456789";
    // A three-byte buffer: every line straddles several reads.
    let mut input = std::io::BufReader::with_capacity(3, text);
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    while let Some(too_long) = read_line(&mut input, &mut buf, 10).unwrap() {
        seen.push((too_long, buf.clone()));
    }
    assert_eq!(
        seen,
        [
            (true, Vec::new()),
            (false, b"012345678\n".to_vec()),
            (true, Vec::new()),
            (false, b"\xff\xfe\n".to_vec()),
            // Exactly the limit, at the end of input without a newline.
            (false, b"0123456789".to_vec()),
        ]
    );
}

#[test]
fn malformed_and_odd_lines_are_counted_not_fatal() {
    let (c, _dir) = classifier("");
    let lines: [&[u8]; 7] = [
        // A byte-order mark, CRLF.
        b"\xef\xbb\xbf192.0.2.1 - - [10/Oct/2026:13:55:36 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"a\"\r\n",
        b"\n",
        b"   \n",
        b"garbage\n",
        // Not UTF-8 in the target: replaced (http accepts it in a path).
        b"192.0.2.1 - - [10/Oct/2026:13:55:37 +0000] \"GET /\xff HTTP/1.1\" 200 1\n",
        // Not UTF-8 in the user agent: replaced, still a request.
        b"192.0.2.1 - - [10/Oct/2026:13:55:38 +0000] \"GET /ok HTTP/1.1\" 200 1 \"-\" \"\xff\"\n",
        b"{\"ts\": 1}\n",
    ];
    let log = lines.concat();
    let mut out = Vec::new();
    let report = run(&c, None, &mut &log[..], None, Some(&mut out)).unwrap();
    assert_eq!(report.requests, 3);
    assert_eq!(report.malformed, 2);
    let lines: Vec<u64> = report.malformed_lines().iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [4, 7]);
    let verdicts: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts[0]["line"], 1);
    assert_eq!(verdicts[0]["ip"], "192.0.2.1");
    assert_eq!(verdicts[1]["path"], "/\u{fffd}");
    assert_eq!(verdicts[2]["path"], "/ok");
    assert_eq!(verdicts[2]["ts"], 1_791_640_538.0);
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
