//! The command line as users meet it: help, exit codes, config errors.

mod common;

use std::process::Command;

use common::usher_bin;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(usher_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

/// `usher check` on a config whose API keys file holds `keys`; returns the
/// exit code, stderr and the keys file's path.
fn check_with_keys(keys: &str) -> (i32, String, String) {
    let (dir, config) = write("[identity.api_keys]\nfile = \"keys.toml\"\n");
    let keys_path = dir.path().join("keys.toml");
    std::fs::write(&keys_path, keys).unwrap();
    let (code, _, err) = run(&["check", "--config", &config]);
    (code, err, keys_path.display().to_string())
}

#[test]
fn help_lists_only_working_commands() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("serve") && out.contains("check"), "{out}");
    assert!(out.contains("keys"), "{out}");
    for later in ["replay", "explain", "demo"] {
        assert!(
            !out.contains(later),
            "--help lists `{later}`, which does not exist yet:\n{out}"
        );
    }
    let (code, out, _) = run(&["serve", "--help"]);
    assert_eq!(code, 0);
    for flag in ["--config", "--listen", "--upstream", "--admin", "--workers"] {
        assert!(
            out.contains(flag),
            "{flag} missing from serve --help:\n{out}"
        );
    }
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(run(&[]).0, 2);
    assert_eq!(run(&["serve", "--bogus"]).0, 2);
    assert_eq!(run(&["serve", "--listen", "not-an-address"]).0, 2);
    let (code, _, err) = run(&["serve", "--upstream", "https://app"]);
    assert_eq!(code, 2);
    assert!(err.contains("https"), "{err}");
}

#[test]
fn invalid_config_exits_2_naming_key_and_line() {
    let (_dir, path) = write("listen = \"127.0.0.1:0\"\n\n[timeouts]\nconect = \"5s\"\n");
    let (code, _, err) = run(&["serve", "--config", &path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{path}:4:1")), "{err}");
    assert!(err.contains("conect"), "{err}");

    let (_dir, path) =
        write("upstream = \"http://127.0.0.1:1\"\ntrusted_proxies = [\"10.0.0.0/40\"]\n");
    let (code, _, err) = run(&["check", "--config", &path]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{path}:2:")) && err.contains("trusted_proxies"),
        "{err}"
    );

    let (code, _, err) = run(&["check", "--config", "/nonexistent/usher.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/usher.toml"), "{err}");
}

#[test]
fn check_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/usher.toml");
    let (code, out, err) = run(&["check", "--config", shipped]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn address_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(&["serve", "--listen", &addr, "--admin", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr) && err.contains("proxy"), "{err}");
}

fn hash(stdin: &[u8], args: &[&str]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(usher_bin())
        .args(["keys", "hash"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // usher may exit (bad flags) before reading: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keys_hash_prints_an_entry_that_check_accepts() {
    let (code, entry, err) = hash(
        b"usk_live_abc123\n",
        &["--owner", "acme", "--class", "paying_customer"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !entry.contains("usk_live_abc123"),
        "the key itself is never printed"
    );
    assert!(
        entry.contains("9e6affb5d9f7db1ae9816d651026820b5add77f044c1998b2e2758524f2f55c6"),
        "SHA-256 of the key without its newline: {entry}"
    );
    let (code, err, _) = check_with_keys(&entry);
    assert_eq!(code, 0, "{err}");

    for bad in [&b""[..], b"\n", b"two words", &[b'k'; 600]] {
        let (code, _, err) = hash(bad, &["--owner", "acme"]);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    let (code, _, _) = hash(b"k", &["--owner", "acme", "--class", "registered_user"]);
    assert_eq!(code, 2);
}

#[test]
fn a_broken_keys_file_is_reported_with_its_own_line() {
    let (code, err, keys) = check_with_keys(
        "[[key]]\nsha256 = \"nothex\"\nowner = \"a\"\nclass = \"service_client\"\n",
    );
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{keys}:2:")), "{err}");
    assert!(err.contains("sha256"), "{err}");
}
