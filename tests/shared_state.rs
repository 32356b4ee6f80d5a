//! Shared client state: usher replicas behind one real `redis-server`
//! (started here on an ephemeral port), each seeing a slice of a client's
//! traffic, come to one view of it; Redis going away costs no request.

mod common;

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Usher, echo, full, label, sample, send, upstream};
use http::Request;

/// A `redis-server` of the test's own, without persistence.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        Redis::spawn(port, &[])
    }

    /// A server on `port`, with more options.
    fn spawn(port: u16, options: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(options)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A connection of the test's own, to look at what usher wrote.
    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// The key usher keeps an IPv4 client's counts under (prefix `test:`).
fn client_key(ip: &str) -> String {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    format!("test:c:{{{:032x}}}", u128::from(ip.to_ipv6_mapped()))
}

/// The requests Redis holds for a client over its 5-minute windows, and
/// all of the client's fields.
async fn requests_in_redis(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> (i64, std::collections::HashMap<String, String>) {
    let fields: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(key).query_async(c).await.unwrap();
    let requests = fields
        .iter()
        .filter(|(f, _)| f.starts_with("r300:"))
        .filter_map(|(_, n)| n.parse::<i64>().ok())
        .sum();
    (requests, fields)
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RULES: &str = r#"
[[rule]]
name = "busy"
description = "20 requests a minute, whichever replica saw them"
when.signal = { name = "rate_60s", ge = 20 }
class = "malicious_bot"

[[rule]]
name = "probe"
when.path_prefix = "/probe"
class = "malicious_bot"
action = "deny"

[[rule]]
name = "known-elsewhere"
when.signal = { name = "shared_verdict", ge = 1 }
class = "malicious_bot"
"#;

/// A replica: trusts 127.0.0.1's X-Forwarded-For, syncs every 50 ms.
fn replica(upstream: &str, redis_url: &str, rules: &std::path::Path) -> Usher {
    replica_of(upstream, &format!("url = \"{redis_url}\""), rules)
}

/// A replica of the Redis that `servers` (config lines) names.
fn replica_of(upstream: &str, servers: &str, rules: &std::path::Path) -> Usher {
    Usher::start(&format!(
        r#"upstream = "{upstream}"
trusted_proxies = ["127.0.0.1"]
rules = ["{}"]
[state]
backend = "redis"
{servers}
key_prefix = "test:"
sync_interval = "50ms"
verdict_ttl = "60s"
"#,
        rules.display()
    ))
}

fn rules_file() -> (tempfile::TempDir, std::path::PathBuf) {
    rules_file_with(RULES)
}

fn rules_file_with(rules: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, rules).unwrap();
    (dir, path)
}

/// One request as `client`; the status and the class the upstream heard.
async fn request(usher: &Usher, client: &str, path: &str) -> (u16, Option<String>) {
    let (status, class, _) = request_why(usher, client, path).await;
    (status, class)
}

/// One request as `client`; the status, and the class and reasons the
/// upstream heard.
async fn request_why(
    usher: &Usher,
    client: &str,
    path: &str,
) -> (u16, Option<String>, Option<String>) {
    let (head, body) = send(
        Request::get(usher.url(path))
            .header("x-forwarded-for", client)
            .header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            )
            .header("accept-language", "en")
            .body(full(""))
            .unwrap(),
    )
    .await;
    let seen = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let heard = |name| {
        seen.as_ref()
            .and_then(|seen| label(seen, name).map(str::to_owned))
    };
    (
        head.status.as_u16(),
        heard("x-usher-class"),
        heard("x-usher-reasons"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pace_only_the_sum_exceeds_is_seen_by_both_replicas() {
    let redis = Redis::start();
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    let a = replica(&up.url(), &redis.url(), &rules);
    let b = replica(&up.url(), &redis.url(), &rules);
    only_the_sum_is_busy(&a, &b, "198.51.100.7").await;
    // The client's key expires 10 minutes after its last write.
    let ttl: i64 = redis::cmd("TTL")
        .arg(client_key("198.51.100.7"))
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert!((595..=601).contains(&ttl), "TTL {ttl}");

    // Gone from Redis (evicted, deleted) and written again in the same
    // minute: it expires again.
    let mut c = redis.connection().await;
    let () = redis::cmd("DEL")
        .arg(client_key("198.51.100.7"))
        .query_async(&mut c)
        .await
        .unwrap();
    request(&a, "198.51.100.7", "/").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(client_key("198.51.100.7"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((595..=601).contains(&ttl), "TTL {ttl} after a write anew");
}

/// 15 requests to each replica, alternating: 30 in all, over the rule's
/// 20, while neither replica alone sees more than 15. Early on the client
/// is a public visitor; by the end, both replicas see the sum.
async fn only_the_sum_is_busy(a: &Usher, b: &Usher, client: &str) {
    let mut classes = Vec::new();
    for i in 0..30 {
        let usher = if i % 2 == 0 { a } else { b };
        let (status, class) = request(usher, client, "/products/1").await;
        assert_eq!(status, 200);
        classes.push(class.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(classes[0], "public_visitor");
    assert_eq!(classes[28], "malicious_bot", "replica a: {classes:?}");
    assert_eq!(classes[29], "malicious_bot", "replica b: {classes:?}");
    for usher in [a, b] {
        let metrics = usher.metrics().await;
        assert_eq!(sample(&metrics, "usher_state_backend_up"), Some(1.0));
        assert_eq!(sample(&metrics, "usher_state_sync_errors_total"), Some(0.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_across_replicas() {
    let redis = Redis::start();
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file_with(
        r#"
[limits]
public_visitor = { rate = "10/h", burst = 10 }

[thresholds]
action.public_visitor = "limit"
"#,
    );
    let a = replica(&up.url(), &redis.url(), &rules);
    let b = replica(&up.url(), &redis.url(), &rules);

    // 15 requests to each, alternating, each after the last one's sync:
    // alone, each replica would admit 10 of its 15 (20 in all); sharing
    // what they admitted, they hold the client to its 10, and one more:
    // a replica reads a client's counts when it syncs what it noted of
    // it, so it learns of the other's last admission only after its own
    // next request.
    let client = "198.51.100.20";
    let mut admitted = [0; 2];
    for i in 0..30 {
        let usher = if i % 2 == 0 { &a } else { &b };
        let (status, _) = request(usher, client, "/").await;
        match status {
            200 => admitted[i % 2] += 1,
            429 => {}
            other => panic!("status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let total = admitted[0] + admitted[1];
    assert!(
        (10..=11).contains(&total),
        "admitted by a and b: {admitted:?}"
    );
    assert!(admitted.iter().all(|&n| n > 0), "{admitted:?}");
    // Redis holds what both admitted, in the class's own fields.
    let mut c = redis.connection().await;
    let (_, fields) = requests_in_redis(&mut c, &client_key(client)).await;
    let stored: i64 = fields
        .iter()
        .filter(|(f, _)| f.starts_with("q0:"))
        .filter_map(|(_, n)| n.parse::<i64>().ok())
        .sum();
    assert_eq!(stored, total, "{fields:?}");
    // Another client has its own quota.
    let (status, _) = request(&b, "198.51.100.21", "/").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_of_one_replica_is_known_to_the_other() {
    let redis = Redis::start();
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    let a = replica(&up.url(), &redis.url(), &rules);
    let b = replica(&up.url(), &redis.url(), &rules);

    let (status, _) = request(&a, "198.51.100.8", "/probe/admin").await;
    assert_eq!(status, 403);
    // Replica a does not take its own verdict, read back, for another's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, class, reasons) = request_why(&a, "198.51.100.8", "/").await;
    assert_eq!(class.as_deref(), Some("public_visitor"), "{reasons:?}");
    // Replica b learns of it within a sync or two of the client's first
    // request there (well before the client is busy enough for `busy`);
    // an unrelated client stays a visitor.
    let mut heard = Vec::new();
    for _ in 0..10 {
        let (status, class, reasons) = request_why(&b, "198.51.100.8", "/").await;
        assert_eq!(status, 200);
        heard.push((class, reasons));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = heard.last().cloned().unwrap_or_default();
    assert_eq!(last.0.as_deref(), Some("malicious_bot"), "{heard:?}");
    assert_eq!(last.1.as_deref(), Some("known-elsewhere"), "{heard:?}");
    let (_, other) = request(&b, "198.51.100.9", "/").await;
    assert_eq!(other.as_deref(), Some("public_visitor"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_or_lost_mid_run_costs_no_request() {
    // No Redis yet: usher starts and serves on local state.
    let port = free_port();
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    let a = replica(&up.url(), &format!("redis://127.0.0.1:{port}/"), &rules);
    let (status, _) = request(&a, "198.51.100.10", "/").await;
    assert_eq!(status, 200);
    a.wait_for_metric("usher_state_backend_up", |v| v == 0.0)
        .await;

    // Redis comes: syncing starts.
    let redis = Redis::start_on(port);
    let mut served = 0;
    let up_at = wait_serving(&a, &mut served, |m| {
        sample(m, "usher_state_backend_up") == Some(1.0)
    })
    .await;
    assert!(up_at.is_some(), "sync never started");

    // Redis goes away mid-run: every request is still answered.
    drop(redis);
    let down = wait_serving(&a, &mut served, |m| {
        sample(m, "usher_state_backend_up") == Some(0.0)
            && sample(m, "usher_state_sync_errors_total").is_some_and(|e| e > 0.0)
    })
    .await;
    assert!(down.is_some(), "the loss was not noticed");

    // While it is gone, tries to reach it back off instead of coming at
    // every 50 ms sync: a handful in two seconds, not forty.
    let errors = |m: &str| sample(m, "usher_state_sync_errors_total").unwrap_or(0.0);
    let before = errors(&a.metrics().await);
    for _ in 0..20 {
        let (status, _) = request(&a, "198.51.100.10", "/").await;
        assert_eq!(status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tries = errors(&a.metrics().await) - before;
    assert!(tries <= 8.0, "{tries} tries in 2 s");

    // And back: sync resumes.
    let _redis = Redis::start_on(port);
    let again = wait_serving(&a, &mut served, |m| {
        sample(m, "usher_state_backend_up") == Some(1.0)
    })
    .await;
    assert!(again.is_some(), "sync did not resume");
    assert!(served > 10, "{served}");

    // One log line per change of state, not one per failed sync.
    let log = a.stderr();
    assert_eq!(log.matches("Redis unreachable").count(), 2, "{log}");
    assert_eq!(log.matches("Redis reachable").count(), 2, "{log}");
}

/// Send requests (each must succeed) until the metrics satisfy `done`, for
/// at most 10 s; returns when they did.
async fn wait_serving(
    usher: &Usher,
    served: &mut usize,
    done: impl Fn(&str) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for _ in 0..5 {
            let (status, _) = request(usher, "198.51.100.11", "/").await;
            assert_eq!(status, 200, "a request failed while Redis came or went");
            *served += 1;
        }
        if done(&usher.metrics().await) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_counts_reach_redis_on_shutdown() {
    let redis = Redis::start();
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    // A sync interval longer than the test: only the final flush can
    // bring these requests to Redis.
    let mut a = Usher::start(&format!(
        r#"upstream = "{}"
trusted_proxies = ["127.0.0.1"]
rules = ["{}"]
[state]
backend = "redis"
url = "{}"
key_prefix = "test:"
sync_interval = "1s"
"#,
        up.url(),
        rules.display(),
        redis.url()
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        let (status, _) = request(&a, "198.51.100.12", "/").await;
        assert_eq!(status, 200);
    }
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some_and(|s| s.success()));

    let mut c = redis.connection().await;
    let (requests, fields) = requests_in_redis(&mut c, &client_key("198.51.100.12")).await;
    assert_eq!(requests, 5, "{fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_odd_key_in_redis_spoils_no_other_clients_sync() {
    let redis = Redis::start();
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    let a = replica(&up.url(), &redis.url(), &rules);
    // Someone wrote a non-number where usher keeps a client's verdict.
    let mut c = redis.connection().await;
    let key = client_key("198.51.100.20");
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("v")
        .arg("oops")
        .query_async(&mut c)
        .await
        .unwrap();
    for i in 0..10 {
        let client = if i % 2 == 0 {
            "198.51.100.20"
        } else {
            "198.51.100.21"
        };
        let (status, _) = request(&a, client, "/").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let metrics = a.metrics().await;
    assert_eq!(sample(&metrics, "usher_state_backend_up"), Some(1.0));
    assert_eq!(sample(&metrics, "usher_state_sync_errors_total"), Some(0.0));
    // And the odd client's counts were still kept.
    let (requests, fields) = requests_in_redis(&mut c, &key).await;
    assert_eq!(requests, 5, "{fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_left_by_pauses_are_swept() {
    let redis = Redis::start();
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    let a = replica(&up.url(), &redis.url(), &rules);
    // What a client that came back after pauses would have left behind.
    let mut c = redis.connection().await;
    let key = client_key("198.51.100.30");
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg(&["r1:1000", "1", "r10:1000", "1", "x:960", "1", "f:900", "1"])
        .query_async(&mut c)
        .await
        .unwrap();
    let (status, _) = request(&a, "198.51.100.30", "/").await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names: Vec<String> = redis::cmd("HKEYS")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        let old = ["r1:1000", "r10:1000", "x:960", "f:900"];
        if names.iter().any(|n| n.starts_with("r300:"))
            && !names.iter().any(|n| old.contains(&n.as_str()))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not swept: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_while_idle_shows_in_the_metrics() {
    let redis = Redis::start();
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    let a = replica(&up.url(), &redis.url(), &rules);
    let (status, _) = request(&a, "198.51.100.40", "/").await;
    assert_eq!(status, 200);
    a.wait_for_metric("usher_state_backend_up", |v| v == 1.0)
        .await;
    // No traffic from here on (and every note flushed): only the idle
    // check can notice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(redis);
    a.wait_for_metric("usher_state_backend_up", |v| v == 0.0)
        .await;
}

/// A Redis Cluster of three primaries, each holding a third of the slots,
/// made by hand (no `redis-cli`): slots assigned, nodes introduced, and
/// ready once every node says `cluster_state:ok`.
struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    async fn start() -> Cluster {
        let mut nodes = Vec::new();
        let buses = [free_port(), free_port(), free_port()];
        for bus in buses {
            nodes.push(Redis::spawn(
                free_port(),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ],
            ));
        }
        let third = 16384 / 3;
        for (i, node) in nodes.iter().enumerate() {
            let mut c = node.connection().await;
            let (first, last) = (i * third, if i == 2 { 16383 } else { (i + 1) * third - 1 });
            let () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let mut first = nodes[0].connection().await;
        for (node, bus) in nodes.iter().zip(buses).skip(1) {
            let () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .arg(bus)
                .query_async(&mut first)
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            let mut c = node.connection().await;
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not form: {info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Cluster { nodes }
    }

    /// A connection of the test's own to the whole cluster.
    async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(vec![self.nodes[0].url()])
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_through_a_redis_cluster() {
    let cluster = Cluster::start().await;
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    // Each replica is told of one node and finds the others.
    let servers = |node: &Redis| format!("cluster = [\"{}\"]", node.url());
    let a = replica_of(&up.url(), &servers(&cluster.nodes[0]), &rules);
    let b = replica_of(&up.url(), &servers(&cluster.nodes[2]), &rules);

    only_the_sum_is_busy(&a, &b, "198.51.100.7").await;

    // Many clients in each sync, their keys in slots of different nodes:
    // each is judged on its own sum. Two busy ones (15 requests to each
    // replica) and four light ones (3 to each), interleaved.
    let busy = ["198.51.100.50", "198.51.100.51"];
    let light = [
        "198.51.100.60",
        "198.51.100.61",
        "198.51.100.62",
        "198.51.100.63",
    ];
    for i in 0..30 {
        let usher = if i % 2 == 0 { &a } else { &b };
        for client in busy {
            assert_eq!(request(usher, client, "/products/1").await.0, 200);
        }
        if i < 6 {
            for client in light {
                assert_eq!(request(usher, client, "/").await.0, 200);
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for usher in [&a, &b] {
        for client in busy {
            let (_, class) = request(usher, client, "/").await;
            assert_eq!(class.as_deref(), Some("malicious_bot"), "{client}");
        }
        for client in light {
            let (_, class) = request(usher, client, "/").await;
            assert_eq!(class.as_deref(), Some("public_visitor"), "{client}");
        }
    }

    // Clients whose keys fall in slots of every node: each one's requests
    // at both replicas add up in its own hash, wherever that lives.
    let clients: Vec<String> = (30..46).map(|i| format!("198.51.100.{i}")).collect();
    for client in &clients {
        for usher in [&a, &b, &a] {
            let (status, _) = request(usher, client, "/").await;
            assert_eq!(status, 200);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = cluster.connection().await;
    for client in &clients {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(client_key(client))
            .query_async(&mut c)
            .await
            .unwrap();
        let requests: i64 = fields
            .iter()
            .filter(|(f, _)| f.starts_with("r300:"))
            .filter_map(|(_, n)| n.parse::<i64>().ok())
            .sum();
        assert_eq!(requests, 3, "{client}: {fields:?}");
    }
    for node in &cluster.nodes {
        let keys: i64 = redis::cmd("DBSIZE")
            .query_async(&mut node.connection().await)
            .await
            .unwrap();
        assert!(keys > 0, "every node holds some clients");
    }
}

/// The test CA and server certificate for Redis over TLS.
fn tls_fixture(file: &str) -> String {
    format!(
        "{}/tests/fixtures/redis-tls/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_over_tls_with_their_own_ca() {
    let port = free_port();
    let (cert, key, ca) = (
        tls_fixture("server.pem"),
        tls_fixture("server.key"),
        tls_fixture("ca.pem"),
    );
    let _redis = Redis::spawn(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
    );
    let up = upstream(echo).await;
    let (_rules_dir, rules) = rules_file();
    let url = format!("rediss://127.0.0.1:{port}/");
    let trusting = format!("url = \"{url}\"\ntls_ca = \"{ca}\"");
    let a = replica_of(&up.url(), &trusting, &rules);
    let b = replica_of(&up.url(), &trusting, &rules);
    only_the_sum_is_busy(&a, &b, "198.51.100.7").await;

    // Without the CA, the server's certificate is not trusted: no sync,
    // and every request is still served.
    let doubting = replica_of(&up.url(), &format!("url = \"{url}\""), &rules);
    let (status, _) = request(&doubting, "198.51.100.8", "/").await;
    assert_eq!(status, 200);
    doubting
        .wait_for_metric("usher_state_backend_up", |v| v == 0.0)
        .await;
    let (status, _) = request(&doubting, "198.51.100.8", "/").await;
    assert_eq!(status, 200);
}
