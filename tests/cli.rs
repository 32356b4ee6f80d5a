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
/// exit code, the report and the keys file's path.
fn check_with_keys(keys: &str) -> (i32, String, String) {
    let (dir, config) = write("[identity.api_keys]\nfile = \"keys.toml\"\n");
    let keys_path = dir.path().join("keys.toml");
    std::fs::write(&keys_path, keys).unwrap();
    let (code, out, _) = run(&["check", "--config", &config]);
    (code, out, keys_path.display().to_string())
}

#[test]
fn help_lists_every_command() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for command in [
        "serve", "check", "keys", "replay", "explain", "demo", "health",
    ] {
        assert!(
            out.contains(command),
            "--help does not list `{command}`:\n{out}"
        );
    }
    for (command, flags) in [
        (
            "replay",
            &["--config", "--format", "--out", "--compare"][..],
        ),
        (
            "explain",
            &["--header", "--ip", "--body-file", "--format"][..],
        ),
        ("demo", &["--duration", "--listen", "--admin"][..]),
        (
            "health",
            &["--config", "--admin", "--ready", "--timeout"][..],
        ),
    ] {
        let (code, out, _) = run(&[command, "--help"]);
        assert_eq!(code, 0);
        for flag in flags {
            assert!(
                out.contains(flag),
                "`{command} --help` lacks {flag}:\n{out}"
            );
        }
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
    let (code, out, _) = run(&["check", "--config", &path]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("{path}:2:")) && out.contains("trusted_proxies"),
        "{out}"
    );

    let (code, out, _) = run(&["check", "--config", "/nonexistent/usher.toml"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("/nonexistent/usher.toml: error: cannot read"),
        "{out}"
    );
}

#[test]
fn check_accepts_the_shipped_config_without_warnings() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/usher.toml");
    let (code, out, err) = run(&["check", "--config", shipped]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("{shipped}: ok (0 warnings)\n"));
    let (code, out, _) = run(&["check", "--config", shipped, "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report,
        serde_json::json!({"ok": true, "errors": [], "warnings": []})
    );
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

/// A config (`usher.toml`, loading `rules/*.toml`) and the given files
/// beside it; returns the folder and the config's path.
fn setup(config: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let (dir, path) = write(&format!("rules = [\"rules/*.toml\"]\n{config}"));
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("rules").join(name), text).unwrap();
    }
    (dir, path)
}

/// `usher check` in the human format: exit code and report lines, with
/// the folder left out of the paths.
fn check(dir: &tempfile::TempDir, config: &str) -> (i32, Vec<String>) {
    let (code, out, err) = run(&["check", "--config", config]);
    assert!(err.is_empty(), "the report goes to stdout: {err}");
    let folder = format!("{}/", dir.path().display());
    let lines = out.lines().map(|l| l.replace(&folder, "")).collect();
    (code, lines)
}

const RULE: &str = "[[rule]]\nname = \"r\"\nscore = 1\n";

#[test]
fn check_puts_each_error_at_its_file_and_line() {
    for (file, text, want) in [
        (
            "10-syntax.toml",
            "[[rule]]\nname = \"r\"\nscore = [1\n",
            "rules/10-syntax.toml:3:",
        ),
        (
            "10-regex.toml",
            &format!("{RULE}when.user_agent = [\n  'ok',\n  '(?i)bad(',\n]\n"),
            "rules/10-regex.toml:6:3: error: rule `r`: invalid regex `(?i)bad(`",
        ),
        (
            "10-key.toml",
            &format!("{RULE}\nwhen.user_agnet = 'x'\n"),
            "rules/10-key.toml:5:6: error: rule `r`: `when.user_agnet`: unknown field",
        ),
        (
            "10-cidr.toml",
            &format!("{RULE}when.ip = [\"10.0.0.0/8\", \"10.0.0.300\"]\n"),
            "rules/10-cidr.toml:4:26: error: rule `r`: `10.0.0.300` is not an IP address",
        ),
    ] {
        let (dir, config) = setup("", &[(file, text)]);
        let (code, lines) = check(&dir, &config);
        assert_eq!(code, 2, "{file}: {lines:#?}");
        assert!(lines[0].starts_with(want), "{file}: {lines:#?}");
        assert_eq!(lines.last().unwrap(), "usher.toml: 1 error, 0 warnings");
    }
    // A regex that matches the empty string is allowed, with a warning.
    let (dir, config) = setup(
        "",
        &[("10-empty.toml", &format!("{RULE}when.path = '(?i)x*'\n"))],
    );
    let (code, lines) = check(&dir, &config);
    assert_eq!(code, 0, "{lines:#?}");
    assert!(
        lines[0].starts_with(
            "rules/10-empty.toml:4:13: warning: rule `r`: regex `(?i)x*` matches the empty string"
        ),
        "{lines:#?}"
    );
}

#[test]
fn check_lists_every_broken_rule_in_every_file() {
    let (dir, config) = setup(
        "",
        &[
            (
                "10-a.toml",
                "[[rule]]\nname = \"one\"\nscore = 1\nwhen.path = '('\n\n\
                 [[rule]]\nname = \"fine\"\nscore = 1\n\n\
                 [[rule]]\nname = \"two\"\nscore = 1\nwhen.method = 'get'\n",
            ),
            (
                "20-b.toml",
                "[[rule]]\nname = \"three\"\nclass = \"robot\"\n\n\
                 [[rule]]\nname = \"one\"\nscore = 2\n\n\
                 [[crawler]]\nname = \"c\"\nuser_agent = 'C'\nranges = '192.0.2.0/33'\n",
            ),
        ],
    );
    let (code, lines) = check(&dir, &config);
    assert_eq!(code, 2, "{lines:#?}");
    let expect = [
        "rules/10-a.toml:4:13: error: rule `one`: invalid regex `(`",
        "rules/10-a.toml:13:15: error: rule `two`: `get` is not an upper-case method name",
        "rules/20-b.toml:3:9: error: rule `three`: `class`: unknown variant `robot`",
        "rules/20-b.toml:6:8: error: rule `one`: already defined at ",
        "rules/20-b.toml:12:10: error: crawler `c`: `192.0.2.0/33` is not",
        "usher.toml: 5 errors, 0 warnings",
    ];
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(expect) {
        assert!(line.starts_with(want), "{line}\n  wanted {want}");
    }

    // serve refuses to start, naming them all.
    let (code, _, err) = run(&["serve", "--config", &config]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("usher: 5 errors:\n"), "{err}");
    for rule in ["`one`", "`two`", "`three`", "crawler `c`"] {
        assert!(err.contains(rule), "{rule}: {err}");
    }
}

#[test]
fn check_reports_key_file_and_rule_errors_together() {
    let (dir, config) = setup(
        "[identity.api_keys]\nfile = \"keys.toml\"\n",
        &[("10-a.toml", &format!("{RULE}when.path = '('\n"))],
    );
    std::fs::write(
        dir.path().join("keys.toml"),
        "[[key]]\nsha256 = \"nothex\"\nowner = \"a\"\nclass = \"service_client\"\n",
    )
    .unwrap();
    let (code, lines) = check(&dir, &config);
    assert_eq!(code, 2, "{lines:#?}");
    assert!(lines[0].starts_with("keys.toml:2:"), "{lines:#?}");
    assert!(lines[1].starts_with("rules/10-a.toml:4:"), "{lines:#?}");
    assert_eq!(lines[2], "usher.toml: 2 errors, 0 warnings");
}

#[test]
fn check_warns_at_the_right_lines_and_still_passes() {
    let (dir, config) = setup(
        "trusted_proxies = [\n  \"10.0.0.0/8\",\n  \"172.16.0.1/12\",\n]\n",
        &[
            (
                "10-a.toml",
                r#"[[rule]]
name = "everyone"
class = "public_visitor"

[[rule]]
name = "never"
when.path_prefix = "/admin"
class = "malicious_bot"

[[rule]]
name = "first"
when.path_prefix = "/api"
when.method = ["POST", "PUT"]
score = 10

[[rule]]
name = "again"
when = { method = ["PUT", "POST"], path_prefix = ["/api"] }
score = 20

[[rule]]
name = "trial"
mode = "shadow"
when.path_prefix = "/admin"
class = "malicious_bot"

[[rule]]
name = "nets"
score = 10
when.ip = ["192.0.2.7/24"]
when.ip_file = "bad.txt"

[[crawler]]
name = "c"
user_agent = '(?i)\bcbot\b'
ranges = ["198.51.100.1/24"]
ranges_file = "c.txt"
"#,
            ),
            ("bad.txt", "# bad\n203.0.113.0/24\n2001:db8::1/32\n"),
            ("c.txt", "198.51.100.0/24\n\n198.18.0.9/15\n"),
        ],
    );
    let (code, lines) = check(&dir, &config);
    assert_eq!(code, 0, "{lines:#?}");
    let expect = [
        "usher.toml:4:3: warning: trusted_proxies: `172.16.0.1/12` has host bits set, so it stands for all of 172.16.0.0/12: did you mean 172.16.0.0/12",
        "rules/10-a.toml:6:8: warning: rule `never`: can never change a verdict: rule `everyone` (",
        "rules/10-a.toml:17:8: warning: rule `again`: same conditions as rule `first` (",
        "rules/10-a.toml:30:12: warning: rule `nets`: `192.0.2.7/24` has host bits set",
        "rules/10-a.toml:36:11: warning: crawler `c`: `198.51.100.1/24` has host bits set",
        "rules/bad.txt:3:1: warning: rule `nets`: `2001:db8::1/32` has host bits set",
        "rules/c.txt:3:1: warning: crawler `c`: `198.18.0.9/15` has host bits set",
        "usher.toml: ok (7 warnings)",
    ];
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(expect) {
        assert!(line.starts_with(want), "{line}\n  wanted {want}");
    }
    assert!(
        lines[1].contains("10-a.toml:2)"),
        "names where the shadowing rule is: {}",
        lines[1]
    );
    assert!(lines[2].contains("10-a.toml:11)"), "{}", lines[2]);
}

#[test]
fn check_json_lists_errors_and_warnings_for_ci() {
    let (dir, config) = setup(
        "trusted_proxies = [\"10.0.0.1/8\"]\n",
        &[(
            "10-a.toml",
            "[[rule]]\nname = \"bad\"\nscore = 1\nwhen.path = '('\n",
        )],
    );
    let (code, out, _) = run(&["check", "--config", &config, "--format", "json"]);
    assert_eq!(code, 2, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(report["ok"], false);
    let error = &report["errors"][0];
    assert_eq!(
        error["file"],
        dir.path().join("rules/10-a.toml").display().to_string()
    );
    assert_eq!(error["line"], 4);
    assert_eq!(error["column"], 13);
    assert_eq!(error["rule"], "bad");
    assert!(error["message"].as_str().unwrap().contains("invalid regex"));
    assert_eq!(report["errors"].as_array().unwrap().len(), 1);
    let warning = &report["warnings"][0];
    assert_eq!(warning["file"], config);
    assert_eq!(
        (warning["line"].as_u64(), warning["column"].as_u64()),
        (Some(2), Some(20))
    );
    assert_eq!(warning["rule"], serde_json::Value::Null);
    assert!(warning["message"].as_str().unwrap().contains("10.0.0.0/8"));

    // Unreadable: still one document, the file without a line.
    let (code, out, _) = run(&[
        "check",
        "--config",
        "/nonexistent/u.toml",
        "--format",
        "json",
    ]);
    assert_eq!(code, 2);
    let report: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(report["errors"][0]["file"], "/nonexistent/u.toml");
    assert_eq!(report["errors"][0]["line"], serde_json::Value::Null);
}

#[test]
fn check_help_explains_output_and_exit_codes() {
    let (code, out, _) = run(&["check", "--help"]);
    assert_eq!(code, 0);
    for needed in [
        "--format",
        "json",
        "file:line:column",
        "warning",
        "host bits",
        "same conditions",
        "Exit codes: 0",
    ] {
        assert!(out.contains(needed), "`{needed}` missing:\n{out}");
    }
}

/// A one-shot server that answers every connection with `answer`.
fn answering(answer: &'static [u8]) -> std::net::SocketAddr {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(answer);
        }
    });
    addr
}

#[test]
fn health_asks_a_running_usher_and_fails_on_anything_but_200() {
    let usher = common::Usher::start("");
    let admin = usher.admin.to_string();
    let (code, out, err) = run(&["health", "--admin", &admin]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/healthz: ok"), "{out}");
    let (code, out, err) = run(&["health", "--admin", &admin, "--ready"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/readyz: ok"), "{out}");

    // The address from a config; a wildcard listener is asked on loopback.
    let (_dir, config) = write(&format!("admin = \"0.0.0.0:{}\"\n", usher.admin.port()));
    let (code, out, err) = run(&["health", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("http://127.0.0.1:"), "{out}");

    for (answer, said) in [
        (
            &b"HTTP/1.1 503 Service Unavailable\r\n\r\n"[..],
            "answered 503",
        ),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not HTTP"),
        (b"", "answered nothing"),
    ] {
        let addr = answering(answer).to_string();
        let (code, _, err) = run(&["health", "--admin", &addr]);
        assert_eq!(code, 1, "{said}: {err}");
        assert!(err.contains(said), "{said}: {err}");
    }
    let (refusing, _held) = common::refusing_addr();
    let (code, _, err) = run(&["health", "--admin", &refusing.to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/healthz"), "{err}");

    // Only `admin` matters: the rest of a file being edited does not make
    // a running usher unhealthy, but a wrong `admin` fails (with 1, the only
    // failure code orchestrators expect).
    let (_dir, editing) = write(&format!(
        "admin = \"0.0.0.0:{}\"\nnot_a_key = 1\nlisten = [\n",
        usher.admin.port()
    ));
    let (code, out, err) = run(&["health", "--config", &editing]);
    assert_eq!(code, 0, "{out}{err}");
    let (_dir, broken) = write("admin = 9090\n");
    let (code, _, err) = run(&["health", "--config", &broken]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("usher.toml"), "{err}");
}
