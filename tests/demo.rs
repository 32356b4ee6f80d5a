//! End-to-end: `usher demo` produces every class, and stops cleanly on
//! Ctrl-C as well as after --duration.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The final table's counts per class (all actions summed).
fn final_counts(stdout: &str) -> Vec<(String, u64)> {
    let table = stdout.rsplit("final\n").next().unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let class = cols.next()?.to_owned();
            let n: Option<u64> = cols.map(|c| c.parse::<u64>().ok()).sum();
            Some((class, n?))
        })
        .collect()
}

fn demo(args: &[&str]) -> std::process::Child {
    Command::new(common::usher_bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_scripted_demo_produces_every_class() {
    let out = demo(&["--duration", "8"]).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("metrics on http://127.0.0.1:"), "{stdout}");
    let counts = final_counts(&stdout);
    for class in [
        "public_visitor",
        "registered_user",
        "paying_customer",
        "service_client",
        "malicious_bot",
    ] {
        let n = counts.iter().find(|(c, _)| c == class).map(|(_, n)| *n);
        assert!(n.is_some_and(|n| n > 0), "{class}: {n:?}\n{stdout}");
    }
    for rule in ["spoofed-crawler", "credential-stuffing", "http-library"] {
        assert!(stdout.contains(rule), "{rule}\n{stdout}");
    }
}

#[test]
fn ctrl_c_stops_the_demo_cleanly() {
    let child = demo(&[]);
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("final\n"), "{stdout}");
    eprintln!("stopped {:?} after SIGINT", started.elapsed());
}
