//! Hot reload, end to end: the real binary, its files changed under it,
//! and what reaches the upstream (labels), the admin answer and the metrics.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestBody, Usher, client, echo, full, label, sample, upstream};
use http::Request;
use http_body_util::BodyExt;

/// A folder of config and rule files, written the way editors and
/// deployment tools do: a whole new file renamed over the old one.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        write_atomically(&self.path(name), text);
    }
}

fn write_atomically(path: &Path, text: &str) {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A config whose rules are one file, `rules.toml`, holding `rules`.
fn one_rule_file(up: &common::Upstream, rules: &str) -> Files {
    let files = Files::new();
    files.write("rules.toml", rules);
    files.write(
        "usher.toml",
        &common::config(up, "rules = [\"rules.toml\"]"),
    );
    files
}

/// A rule that labels requests for `path` with its name.
fn label_rule(name: &str, path: &str) -> String {
    format!("[[rule]]\nname = \"{name}\"\nwhen.path = \"{path}\"\nscore = 1\n")
}

/// The rule names the upstream was told for a GET of `path`.
async fn reasons(usher: &Usher, path: &str) -> String {
    let (status, body) = common::get(&usher.url(path)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    label(&seen, "x-usher-reasons")
        .unwrap_or_default()
        .to_owned()
}

/// `POST /reload` on the admin listener: status and JSON answer.
async fn post_reload(usher: &Usher) -> (u16, serde_json::Value) {
    let req = Request::post(usher.admin_url("/reload"))
        .body(full(""))
        .unwrap();
    let (parts, body) = common::send(req).await;
    let answer = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (parts.status.as_u16(), answer)
}

/// Poll `check` until it holds, failing after a generous deadline.
async fn eventually<F, Fut>(what: &str, usher: &Usher, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; usher said:\n{}",
            usher.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(usher: &Usher, series: &str) -> f64 {
    sample(&usher.metrics().await, series).unwrap_or_else(|| panic!("no {series}"))
}

const SUCCESS: &str = r#"usher_config_reloads_total{result="success"}"#;
const FAILURE: &str = r#"usher_config_reloads_total{result="failure"}"#;
const LOADED: &str = "usher_config_last_reload_success_timestamp_seconds";
const LAST_OK: &str = "usher_config_last_reload_successful";

/// The number of "configuration reloaded" log lines naming `trigger`.
fn reloads_logged(usher: &Usher, trigger: &str) -> usize {
    usher
        .stderr()
        .lines()
        .filter(|l| l.contains("configuration reloaded") && l.contains(trigger))
        .count()
}

#[tokio::test]
async fn a_changed_rule_file_applies_on_sighup_on_post_reload_and_by_itself() {
    let up = upstream(echo).await;
    let files = Files::new();
    files.write("rules/10-a.toml", &label_rule("first", "/a"));
    files.write(
        "usher.toml",
        &common::config(&up, "rules = [\"rules/*.toml\"]"),
    );
    let usher = Usher::start_file(&files.path("usher.toml"));
    assert_eq!(reasons(&usher, "/a").await, "first");
    assert!(metric(&usher, LOADED).await > 1.0e9, "set at start");
    assert_eq!(metric(&usher, LAST_OK).await, 1.0, "nothing failed yet");
    assert_eq!(metric(&usher, SUCCESS).await, 0.0);
    assert_eq!(metric(&usher, FAILURE).await, 0.0);

    // SIGHUP: once its reload is logged, the new rule is in force.
    files.write("rules/10-a.toml", &label_rule("after-sighup", "/a"));
    usher.signal(libc::SIGHUP);
    eventually("a reload on SIGHUP", &usher, || async {
        reloads_logged(&usher, "sighup") == 1
    })
    .await;
    assert_eq!(reasons(&usher, "/a").await, "after-sighup");

    // POST /reload: answered once the new set is in force.
    files.write("rules/10-a.toml", &label_rule("after-post", "/a"));
    let (status, answer) = post_reload(&usher).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], "success");
    assert_eq!(answer["restart_required"], serde_json::json!([]));
    assert_eq!(reasons(&usher, "/a").await, "after-post");

    // No signal at all: a new file matching the glob is noticed.
    files.write("rules/20-b.toml", &label_rule("by-itself", "/b"));
    eventually("a reload on a file change", &usher, || async {
        reasons(&usher, "/b").await == "by-itself"
    })
    .await;
    assert_eq!(reasons(&usher, "/a").await, "after-post");
    assert!(metric(&usher, SUCCESS).await >= 3.0);
    assert_eq!(metric(&usher, FAILURE).await, 0.0);
    assert!(reloads_logged(&usher, "file_change") >= 1);
}

#[tokio::test]
async fn an_invalid_rule_file_is_refused_and_the_old_rules_keep_serving() {
    let up = upstream(echo).await;
    let files = one_rule_file(&up, &label_rule("good", "/x"));
    let usher = Usher::start_file(&files.path("usher.toml"));
    assert_eq!(reasons(&usher, "/x").await, "good");
    let loaded = metric(&usher, LOADED).await;

    // A regex that does not compile, on line 3.
    files.write(
        "rules.toml",
        "[[rule]]\nname = \"broken\"\nwhen.user_agent = \"(unclosed\"\nscore = 1\n",
    );
    let (status, answer) = post_reload(&usher).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["result"], "failure");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("rules.toml:3:"), "{error}");
    assert_eq!(reasons(&usher, "/x").await, "good", "the old rules serve");
    let failures = metric(&usher, FAILURE).await;
    assert!(failures >= 1.0, "{failures}");
    assert_eq!(metric(&usher, SUCCESS).await, 0.0);
    assert_eq!(
        metric(&usher, LOADED).await,
        loaded,
        "no success, no new time"
    );
    assert_eq!(metric(&usher, LAST_OK).await, 0.0);
    assert!(
        usher.stderr().contains("configuration reload failed"),
        "{}",
        usher.stderr()
    );

    // The watcher saw the broken file too but did not retry it in a loop;
    // fixing the file is picked up by itself.
    files.write("rules.toml", &label_rule("fixed", "/x"));
    eventually("the fixed file to be loaded", &usher, || async {
        reasons(&usher, "/x").await == "fixed"
    })
    .await;
    assert!(metric(&usher, LOADED).await >= loaded);
    assert_eq!(metric(&usher, LAST_OK).await, 1.0, "fixed");
    assert!(
        metric(&usher, FAILURE).await <= 2.0,
        "one per trigger at most"
    );
}

#[tokio::test]
async fn behaviour_state_and_quotas_survive_a_reload() {
    let up = upstream(echo).await;
    let files = Files::new();
    files.write(
        "rules/10-busy.toml",
        "[limits]\npublic_visitor = { rate = \"1/h\", burst = 6 }\n\n\
         [thresholds]\naction.public_visitor = \"limit\"\n\n\
         [[rule]]\nname = \"busy\"\nwhen.signal = { name = \"rate_60s\", ge = 5 }\nscore = 1\n",
    );
    files.write(
        "usher.toml",
        &common::config(&up, "rules = [\"rules/*.toml\"]"),
    );
    let usher = Usher::start_file(&files.path("usher.toml"));
    for _ in 0..4 {
        assert_eq!(reasons(&usher, "/").await, "", "under the rate");
    }

    files.write("rules/20-marker.toml", &label_rule("marker", "/"));
    let (status, answer) = post_reload(&usher).await;
    assert_eq!(status, 200, "{answer}");

    // The fifth request in the minute: the rate counted before the reload
    // still counts, under the reloaded rules.
    assert_eq!(reasons(&usher, "/").await, "busy,marker");
    assert_eq!(reasons(&usher, "/").await, "busy,marker");
    // Six requests spent the burst of six; a reset quota would allow more.
    let (status, _) = common::get(&usher.url("/")).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn no_request_fails_while_reloading_under_load() {
    let up = upstream(echo).await;
    let files = one_rule_file(&up, &label_rule("v0", "/load"));
    let usher = Arc::new(Usher::start_file(&files.path("usher.toml")));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (usher, stop, ok, failed) = (usher.clone(), stop.clone(), ok.clone(), failed.clone());
        load.spawn(async move {
            // One keep-alive connection pool per task.
            let client = client::<TestBody>();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(usher.url("/load")).body(full("")).unwrap();
                let good = match client.request(req).await {
                    Ok(response) if response.status() == 200 => {
                        match response.into_body().collect().await {
                            Ok(body) => {
                                serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
                                    .is_ok_and(|seen| seen["uri"] == "/load")
                            }
                            Err(e) => {
                                errors.push(e.to_string());
                                false
                            }
                        }
                    }
                    Ok(response) => {
                        errors.push(format!("status {}", response.status()));
                        false
                    }
                    Err(e) => {
                        errors.push(format!("{e:?}"));
                        false
                    }
                };
                let counter = if good { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            errors
        });
    }

    // Let the load run on between reloads: so many more requests done.
    let wait_for_load = |n: usize| {
        let (ok, failed) = (ok.clone(), failed.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_load(50).await;
    for i in 1..=3 {
        files.write("rules.toml", &label_rule(&format!("v{i}"), "/load"));
        let (status, answer) = post_reload(&usher).await;
        assert_eq!(status, 200, "{answer}");
        wait_for_load(ok.load(Ordering::Relaxed) + 50).await;
    }
    files.write("rules.toml", "[[rule]]\nname = \"broken\"\nwhen.path = 3\n");
    let (status, _) = post_reload(&usher).await;
    assert_eq!(status, 500);
    wait_for_load(ok.load(Ordering::Relaxed) + 50).await;
    files.write("rules.toml", &label_rule("v4", "/load"));
    usher.signal(libc::SIGHUP);
    eventually("the SIGHUP reload", &usher, || async {
        reloads_logged(&usher, "sighup") >= 1
    })
    .await;
    files.write("rules.toml", &label_rule("v5", "/load"));
    eventually("the file-change reload", &usher, || async {
        reasons(&usher, "/load").await == "v5"
    })
    .await;
    wait_for_load(ok.load(Ordering::Relaxed) + 50).await;
    stop.store(true, Ordering::Relaxed);

    let mut errors = Vec::new();
    while let Some(task) = load.join_next().await {
        errors.extend(task.unwrap());
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} ok, {failed} failed: {errors:?}");
    assert!(metric(&usher, SUCCESS).await >= 5.0);
    assert!(metric(&usher, FAILURE).await >= 1.0);
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let up = upstream(echo).await;
    let files = Files::new();
    // What the kubelet lays out: a timestamped folder, `..data` pointing
    // at it, and each key a symlink through `..data`.
    let config = common::config(&up, "rules = [\"rules.toml\"]");
    files.write("..2026_01_01/usher.toml", &config);
    files.write("..2026_01_01/rules.toml", &label_rule("v1", "/cm"));
    symlink("..2026_01_01", files.path("..data")).unwrap();
    symlink("..data/usher.toml", files.path("usher.toml")).unwrap();
    symlink("..data/rules.toml", files.path("rules.toml")).unwrap();
    let usher = Usher::start_file(&files.path("usher.toml"));
    assert_eq!(reasons(&usher, "/cm").await, "v1");

    // An update: a new folder, a new link, renamed over `..data` at once.
    files.write("..2026_01_02/usher.toml", &config);
    files.write("..2026_01_02/rules.toml", &label_rule("v2", "/cm"));
    symlink("..2026_01_02", files.path("..data_tmp")).unwrap();
    std::fs::rename(files.path("..data_tmp"), files.path("..data")).unwrap();
    std::fs::remove_dir_all(files.path("..2026_01_01")).unwrap();
    eventually("the swapped rules to be loaded", &usher, || async {
        reasons(&usher, "/cm").await == "v2"
    })
    .await;

    // And again, to show the watch survived the first swap.
    files.write("..2026_01_03/usher.toml", &config);
    files.write("..2026_01_03/rules.toml", &label_rule("v3", "/cm"));
    symlink("..2026_01_03", files.path("..data_tmp")).unwrap();
    std::fs::rename(files.path("..data_tmp"), files.path("..data")).unwrap();
    eventually("the second swap to be loaded", &usher, || async {
        reasons(&usher, "/cm").await == "v3"
    })
    .await;
}

#[tokio::test]
async fn restart_only_settings_are_reported_and_the_rest_applies() {
    let up = upstream(echo).await;
    let other = upstream(echo).await;
    let files = Files::new();
    files.write("usher.toml", &common::config(&up, ""));
    let usher = Usher::start_file(&files.path("usher.toml"));
    let connections = other.connections.load(Ordering::SeqCst);

    // A new upstream applies; a new connect timeout needs a restart.
    files.write(
        "usher.toml",
        &common::config(&other, "[timeouts]\nconnect = \"3s\""),
    );
    let (status, answer) = post_reload(&usher).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["restart_required"],
        serde_json::json!(["timeouts.connect"])
    );
    let (status, _) = common::get(&usher.url("/")).await;
    assert_eq!(status, 200);
    assert!(
        other.connections.load(Ordering::SeqCst) > connections,
        "the new upstream is used"
    );
    assert!(
        usher.stderr().contains("take effect only after a restart"),
        "{}",
        usher.stderr()
    );

    // An invalid config file is refused with its place.
    files.write(
        "usher.toml",
        "upstream = \"http://127.0.0.1:1\"\nlisten = 5\n",
    );
    let (status, answer) = post_reload(&usher).await;
    assert_eq!(status, 500, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("usher.toml:2:"), "{error}");
    let (status, _) = common::get(&usher.url("/")).await;
    assert_eq!(status, 200, "still forwarding to the last good upstream");
}

#[tokio::test]
async fn reload_endpoint_answers_post_only_and_works_without_a_config_file() {
    let up = upstream(echo).await;
    let usher = Usher::start_without_config(&up.url());
    let (status, _) = common::get(&usher.admin_url("/reload")).await;
    assert_eq!(status, 405);

    // Triggers at once: each is answered, one reload after another.
    usher.signal(libc::SIGHUP);
    let posts = (0..4).map(|_| post_reload(&usher));
    for (status, answer) in futures_util::future::join_all(posts).await {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["result"], "success");
    }
    eventually("a reload on SIGHUP", &usher, || async {
        reloads_logged(&usher, "sighup") == 1
    })
    .await;
    assert_eq!(metric(&usher, SUCCESS).await, 5.0);
    assert!(
        usher.stderr().contains("no config file"),
        "{}",
        usher.stderr()
    );
    let (status, _) = common::get(&usher.url("/")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_file_that_fixes_a_failed_reload_triggers_the_next() {
    let up = upstream(echo).await;
    let files = one_rule_file(&up, &label_rule("good", "/x"));
    let usher = Usher::start_file(&files.path("usher.toml"));
    assert_eq!(reasons(&usher, "/x").await, "good");

    // The config now names a keys file in a folder that does not exist
    // yet: the reload fails.
    files.write(
        "usher.toml",
        &common::config(
            &up,
            "rules = [\"rules.toml\"]\n[identity.api_keys]\nfile = \"keys/api.toml\"",
        ),
    );
    eventually("a failed reload", &usher, || async {
        metric(&usher, FAILURE).await >= 1.0
    })
    .await;
    // Writing that file, with no signal or POST, applies the config.
    files.write("keys/api.toml", "");
    eventually("a reload once the keys file exists", &usher, || async {
        metric(&usher, SUCCESS).await >= 1.0
    })
    .await;
}
