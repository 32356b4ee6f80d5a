//! `usher demo`: a first look without a service of one's own. Starts
//! usher with the default rules in front of a built-in echo upstream,
//! drives synthetic traffic of every kind through it (people, accounts,
//! API clients, a verified and a spoofed crawler, a scraper, a credential
//! stuffer) and prints what usher made of it, from its own metrics.

mod traffic;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::classify::Classifier;
use crate::cli::CliError;
use crate::config::Config;
use crate::identity::api_keys::hex;
use crate::metrics::Metrics;
use crate::server::Server;
use crate::verdict::{Action, Class};

/// Flags of `usher demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: Option<u64>,
    /// Address of the demo proxy.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the demo's admin endpoints (/metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
}

/// The shipped rule files, built into the binary so the demo runs from
/// anywhere. A test keeps this list equal to `rules/`.
pub const SHIPPED_RULES: &[(&str, &str)] = &[
    (
        "10-posture.toml",
        include_str!("../../rules/10-posture.toml"),
    ),
    (
        "15-crawlers.toml",
        include_str!("../../rules/15-crawlers.toml"),
    ),
    ("20-probes.toml", include_str!("../../rules/20-probes.toml")),
    (
        "30-scanners.toml",
        include_str!("../../rules/30-scanners.toml"),
    ),
    (
        "40-automation.toml",
        include_str!("../../rules/40-automation.toml"),
    ),
    (
        "45-declared-bots.toml",
        include_str!("../../rules/45-declared-bots.toml"),
    ),
    (
        "50-anomalies.toml",
        include_str!("../../rules/50-anomalies.toml"),
    ),
    (
        "60-credential-stuffing.toml",
        include_str!("../../rules/60-credential-stuffing.toml"),
    ),
    (
        "70-behaviour.toml",
        include_str!("../../rules/70-behaviour.toml"),
    ),
    (
        "crawlers/google.txt",
        include_str!("../../rules/crawlers/google.txt"),
    ),
];

/// Secrets the demo's personas use, made fresh for each run.
pub(crate) struct Secrets {
    pub jwt: Vec<u8>,
    pub api_key: String,
}

/// A scratch folder removed when the demo ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `usher demo`.
pub fn run(args: &DemoArgs) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Io(e);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let secrets = Secrets {
            jwt: hex(&random_bytes(32)?).into_bytes(),
            api_key: hex(&random_bytes(24)?),
        };
        let upstream = upstream::start().await.map_err(io)?;
        let dns = upstream::start_nxdomain_dns().await.map_err(io)?;
        let scratch = Scratch(scratch_dir().map_err(io)?);
        let config_path = write_files(&scratch.0, &secrets, upstream, dns, args).map_err(io)?;
        let config = Config::load(&config_path)?;
        let classifier = Classifier::from_config(&config)?;
        let server = Server::bind(config, classifier).await?;
        let (proxy, admin) = (server.proxy_addr(), server.admin_addr());
        let metrics = server.metrics().clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut server_stop = stop_rx.clone();
        let serving = tokio::spawn(server.run(async move {
            let _ = server_stop.wait_for(|stop| *stop).await;
        }));
        println!("usher demo: proxy on http://{proxy}, metrics on http://{admin}/metrics");
        println!("synthetic traffic: people, free and paying accounts, an API client, a verified");
        println!("and a spoofed crawler, a scraper and a credential stuffer. Ctrl-C stops.\n");
        let generators = traffic::start(proxy, &secrets, stop_rx.clone());

        let deadline = async {
            match args.duration {
                Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(Duration::from_secs(3));
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = ticks.tick() => print!("{}", table(&metrics)),
            }
        }
        let _ = stop_tx.send(true);
        for g in generators {
            let _ = g.await;
        }
        let _ = serving.await;
        println!("final\n{}", table(&metrics));
        drop(scratch);
        Ok(())
    })
}

fn write_files(
    dir: &Path,
    secrets: &Secrets,
    upstream: SocketAddr,
    dns: SocketAddr,
    args: &DemoArgs,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("rules/crawlers"))?;
    for (name, text) in SHIPPED_RULES {
        std::fs::write(dir.join("rules").join(name), text)?;
    }
    std::fs::write(dir.join("demo.secret"), &secrets.jwt)?;
    std::fs::write(
        dir.join("keys.toml"),
        crate::identity::api_keys::entry_for(
            secrets.api_key.as_bytes(),
            "acme-sync",
            Class::ServiceClient,
        ),
    )?;
    let config = format!(
        r#"listen = "{listen}"
admin = "{admin}"
upstream = "http://{upstream}"
trusted_proxies = ["127.0.0.1/32"]
access_log = "off"
rules = ["rules/*.toml"]

[crawlers]
dns_servers = ["{dns}"]

[identity.api_keys]
file = "keys.toml"

[[identity.jwt]]
issuer = "https://demo.usher.invalid/"
audience = "demo"
algorithms = ["HS256"]
secret_file = "demo.secret"
paying = {{ claim = "plan", any_of = ["pro"] }}
"#,
        listen = args.listen,
        admin = args.admin,
    );
    let path = dir.join("usher.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

fn scratch_dir() -> std::io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("usher-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

fn random_bytes(n: usize) -> Result<Vec<u8>, CliError> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| CliError::Usage("no randomness available".to_owned()))?;
    Ok(bytes)
}

/// Requests per class and action, and the top rules, read from the
/// metrics usher exports.
fn table(metrics: &Arc<Metrics>) -> String {
    use std::fmt::Write;
    let text = String::from_utf8_lossy(&metrics.encode()).into_owned();
    let mut by_class = [[0u64; 4]; 5];
    let mut rules: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value.parse::<f64>().unwrap_or(0.0) as u64;
        if let Some(labels) = series.strip_prefix("usher_requests_total{") {
            let class = Class::ALL
                .iter()
                .find(|c| labels.contains(&format!("class=\"{c}\"")));
            let action = Action::ALL
                .iter()
                .find(|a| labels.contains(&format!("action=\"{a}\"")));
            if let (Some(c), Some(a)) = (class, action) {
                by_class[c.index()][a.index()] = value;
            }
        } else if let Some(labels) = series.strip_prefix("usher_rule_matches_total{")
            && labels.contains("mode=\"enforce\"")
            && let Some(rule) = labels
                .split("rule=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
        {
            rules.push((rule.to_owned(), value));
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>9} {:>9} {:>9}",
        "class", "forward", "limit", "deny", "tarpit"
    );
    for class in Class::ALL {
        let row = by_class[class.index()];
        let _ = writeln!(
            out,
            "{:<18} {:>9} {:>9} {:>9} {:>9}",
            class.as_str(),
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
    rules.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<String> = rules
        .iter()
        .filter(|(_, n)| *n > 0)
        .take(6)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let _ = writeln!(out, "top rules: {}\n", top.join(", "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_rules_are_the_shipped_rules() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.push("crawlers/google.txt".to_owned());
        on_disk.sort();
        let mut built_in: Vec<String> =
            SHIPPED_RULES.iter().map(|(n, _)| (*n).to_owned()).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in, "add new rule files to SHIPPED_RULES");
    }
}
