//! The files in `deploy/` against the real binary: every shipped config
//! passes `usher check` laid out as it is deployed, and every metric the
//! dashboard and the Prometheus rules name is one usher exports. (Their
//! queries run against a real Prometheus in `deploy/check`.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Usher, config, echo, get, upstream, usher_bin};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Write a deployed config into `dir`, the image's shipped-rules folder
/// pointing at the repository's `rules/`, and check it.
fn check_deployed(name: &str, dir: &Path) {
    let shipped = repo("rules");
    let text = read(name).replace("/usr/share/usher/rules", shipped.to_str().unwrap());
    let config = dir.join("usher.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(usher_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{name}:\n{report}");
    assert!(report.contains("ok (0 warnings)"), "{name}:\n{report}");
}

/// The indented block under `key: |` in a YAML file (enough for the
/// example Secret's `stringData`).
fn yaml_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines.next().expect("the key");
    let indent = head.len() - head.trim_start().len() + 2;
    lines
        .take_while(|l| l.len() > indent && l[..indent].trim().is_empty())
        .map(|l| format!("{}\n", &l[indent..]))
        .collect()
}

#[test]
fn the_image_config_checks() {
    let dir = tempfile::tempdir().unwrap();
    check_deployed("deploy/docker/usher.toml", dir.path());
}

#[test]
fn the_host_config_checks_with_the_rules_folder_the_install_creates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/local.toml"),
        "# Rules of this host.\n",
    )
    .unwrap();
    check_deployed("deploy/systemd/usher.toml", dir.path());
}

/// Lay out `files` the way the kubelet mounts a ConfigMap or Secret at
/// `dir`: a timestamped folder, `..data` pointing at it, and a symlink per
/// key; a later call swaps `..data` at once, as an update does.
fn kubelet_mount(dir: &Path, version: u32, files: &[(&str, String)]) {
    use std::os::unix::fs::symlink;
    let stamp = format!("..2026_11_26_{version:02}");
    std::fs::create_dir_all(dir.join(&stamp)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&stamp).join(name), text).unwrap();
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{name}"), link).unwrap();
        }
    }
    symlink(&stamp, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_edit_in_the_pods_config_map_reloads_the_running_sidecar() {
    let up = upstream(echo).await;
    let etc = tempfile::tempdir().unwrap();
    let etc = etc.path();
    // deploy/kubernetes as the pod sees it: usher.toml from one ConfigMap
    // at /etc/usher, the site rules from another at /etc/usher/rules, the
    // Secret at /etc/usher/secrets. Only the upstream and the shipped
    // rules' folder differ from the manifests.
    let shipped = repo("rules");
    let config = read("deploy/kubernetes/usher.toml")
        .replace("/usr/share/usher/rules", shipped.to_str().unwrap())
        .replace("http://127.0.0.1:3000", &up.url());
    kubelet_mount(etc, 1, &[("usher.toml", config)]);
    let site = read("deploy/kubernetes/rules/site.toml");
    kubelet_mount(&etc.join("rules"), 1, &[("site.toml", site.clone())]);
    let keys = yaml_block(&read("deploy/kubernetes/secret.yaml"), "api-keys.toml");
    kubelet_mount(&etc.join("secrets"), 1, &[("api-keys.toml", keys)]);

    let usher = Usher::start_file(&etc.join("usher.toml"));
    assert_eq!(
        get(&usher.url("/internal/health")).await.0,
        403,
        "site rule"
    );
    assert_eq!(get(&usher.url("/private/x")).await.0, 200);

    // `kubectl apply -k` with one more rule: the kubelet swaps the rules
    // ConfigMap's `..data`, and the running usher takes it up.
    let edited = format!(
        "{site}\n[[rule]]\nname = \"site-private\"\nwhen.path_prefix = \"/private/\"\naction = \"deny\"\n"
    );
    kubelet_mount(&etc.join("rules"), 2, &[("site.toml", edited)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while get(&usher.url("/private/x")).await.0 != 403 {
        assert!(
            std::time::Instant::now() < deadline,
            "the edited rules were not loaded:\n{}",
            usher.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(get(&usher.url("/internal/health")).await.0, 403);
}

#[test]
fn the_pod_config_checks_with_its_config_maps_and_secret() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["rules", "secrets"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::write(
        dir.path().join("rules/site.toml"),
        read("deploy/kubernetes/rules/site.toml"),
    )
    .unwrap();
    let keys = yaml_block(&read("deploy/kubernetes/secret.yaml"), "api-keys.toml");
    assert!(keys.contains("[[key]]"), "{keys}");
    std::fs::write(dir.path().join("secrets/api-keys.toml"), keys).unwrap();
    check_deployed("deploy/kubernetes/usher.toml", dir.path());
}

/// `usher_*` names in a text, with histogram suffixes taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("usher_") {
        let before = rest[..at].chars().next_back();
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // Recorded series (`job:usher_…:rate5m`) and words like
        // `usher_requests_total` inside longer names are not exported names.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_and_rules_name_is_exported() {
    let up = upstream(echo).await;
    // The shipped rules, and a request one of them matches, for
    // usher_rule_matches_total (its series appear with the first match).
    let rules = format!("rules = [\"{}/*.toml\"]", repo("rules").display());
    let usher = Usher::start(&config(&up, &rules));
    assert_eq!(get(&usher.url("/")).await.0, 200);
    let exported = metric_names(&usher.metrics().await);
    assert!(exported.contains("usher_requests_total"), "{exported:?}");

    for file in [
        "deploy/grafana/usher.json",
        "deploy/prometheus/usher-recording.rules.yml",
        "deploy/prometheus/usher-alerts.rules.yml",
    ] {
        let named = metric_names(&read(file));
        assert!(!named.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics usher does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_dashboard_is_importable_and_every_panel_uses_the_chosen_datasource() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/usher.json")).expect("valid JSON");
    assert_eq!(dashboard["uid"], "usher");
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    let mut queue: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = queue.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            queue.extend(inner);
        }
        panels.push(panel);
    }
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "duplicate id: {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(!expr.contains("irate("), "{title}: {expr}");
            queries += 1;
        }
    }
    assert!(queries >= 12, "{queries} queries");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for name in ["datasource", "job", "instance", "class"] {
        assert!(variables.contains(&name), "{variables:?}");
    }
}
