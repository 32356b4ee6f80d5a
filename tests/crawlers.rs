//! End-to-end: crawler claims checked against published ranges and by
//! forward-confirmed reverse DNS, with a real DNS server on loopback (a
//! small one in this test) and the shipped crawler rules.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Request;
use tokio::net::UdpSocket;

const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// DNS answers: PTR targets (as wire-format names) and addresses by name,
/// and delays before answering some names.
#[derive(Clone, Default)]
struct Zone {
    ptr: HashMap<String, Vec<u8>>,
    addr: HashMap<String, IpAddr>,
    slow: HashMap<String, Duration>,
}

const PTR: u16 = 12;
const A: u16 = 1;
const AAAA: u16 = 28;

/// The questions a DNS server was asked, by name and type.
type Asked = Arc<Mutex<Vec<(String, u16)>>>;

/// A loopback DNS server answering from `zone` (NXDOMAIN otherwise), with
/// TTL 0 so that the resolver's own cache never hides usher's.
async fn dns_server(zone: Zone) -> (SocketAddr, Asked) {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let asked: Asked = Arc::default();
    let log = asked.clone();
    let zone = Arc::new(zone);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let query = buf[..n].to_vec();
            let Some((name, qtype, question_end)) = parse_question(&query) else {
                continue;
            };
            log.lock().unwrap().push((name.clone(), qtype));
            let (socket, zone) = (socket.clone(), zone.clone());
            tokio::spawn(async move {
                if let Some(delay) = zone.slow.get(&name) {
                    tokio::time::sleep(*delay).await;
                }
                let answer: Option<Vec<u8>> = match (qtype, zone.addr.get(&name)) {
                    (PTR, _) => zone.ptr.get(&name).cloned(),
                    (A, Some(IpAddr::V4(ip))) => Some(ip.octets().to_vec()),
                    (AAAA, Some(IpAddr::V6(ip))) => Some(ip.octets().to_vec()),
                    _ => None,
                };
                let mut out = Vec::with_capacity(512);
                out.extend_from_slice(&query[..2]); // id
                let rcode = if answer.is_some() { 0 } else { 3 };
                out.extend_from_slice(&[0x81, 0x80 | rcode]);
                out.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
                out.extend_from_slice(&query[12..question_end]);
                if let Some(rdata) = answer {
                    out.extend_from_slice(&[0xc0, 12]); // the question's name
                    out.extend_from_slice(&qtype.to_be_bytes());
                    out.extend_from_slice(&[0, 1, 0, 0, 0, 0]); // class IN, TTL 0
                    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                    out.extend_from_slice(&rdata);
                }
                let _ = socket.send_to(&out, from).await;
            });
        }
    });
    (addr, asked)
}

/// The question's name (lower case, no root dot), type, and where it ends.
fn parse_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

/// A name in wire format, from its labels.
fn wire(labels: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for label in labels {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

fn encode_name(name: &str) -> Vec<u8> {
    let labels: Vec<&[u8]> = name
        .trim_end_matches('.')
        .split('.')
        .map(str::as_bytes)
        .collect();
    wire(&labels)
}

fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let nibbles: String = v6
                .octets()
                .iter()
                .rev()
                .flat_map(|b| [b & 0xf, b >> 4])
                .map(|n| format!("{n:x}."))
                .collect();
            format!("{nibbles}ip6.arpa")
        }
    }
}

fn zone() -> Zone {
    let mut z = Zone::default();
    let mut host = |ip: &str, name: &str, back: Option<&str>| {
        let ip: IpAddr = ip.parse().unwrap();
        z.ptr.insert(reverse_name(ip), encode_name(name));
        if let Some(back) = back {
            z.addr
                .insert(name.trim_end_matches('.').to_owned(), back.parse().unwrap());
        }
    };
    // A real crawler: the name is Google's and resolves back.
    host(
        "203.0.113.7",
        "crawl-203-0-113-7.googlebot.com.",
        Some("203.0.113.7"),
    );
    host(
        "2001:db8::7",
        "crawl-v6.googlebot.com.",
        Some("2001:db8::7"),
    );
    // A name that only contains Google's domain.
    host(
        "203.0.113.8",
        "crawl.googlebot.com.evil.example.",
        Some("203.0.113.8"),
    );
    // Google's domain, but it resolves elsewhere: a forged PTR record.
    host(
        "203.0.113.9",
        "crawl-fake.googlebot.com.",
        Some("198.51.100.1"),
    );
    // google.com, but a user-triggered fetcher's name, not a crawler's.
    host(
        "203.0.113.12",
        "google-proxy-203-0-113-12.google.com.",
        Some("203.0.113.12"),
    );
    host(
        "203.0.113.13",
        "rate-limited-proxy-203-0-113-13.google.com.",
        Some("203.0.113.13"),
    );
    host("127.0.0.1", "localhost.", None);
    // A crawler whose DNS answers slowly.
    host(
        "203.0.113.10",
        "crawl-203-0-113-10.googlebot.com.",
        Some("203.0.113.10"),
    );
    z.slow.insert(
        reverse_name("203.0.113.10".parse().unwrap()),
        Duration::from_millis(800),
    );
    // A hostile PTR answer: one label holding a dot, whose text reads like
    // a name under googlebot.com.
    z.ptr.insert(
        reverse_name("203.0.113.11".parse().unwrap()),
        wire(&[b"crawl-1.googlebot", b"com"]),
    );
    z.addr.insert(
        "crawl-1.googlebot.com".to_owned(),
        "203.0.113.11".parse().unwrap(),
    );
    z
}

fn crawler_config(up: &Upstream, dns: SocketAddr) -> String {
    config(
        up,
        &format!(
            "rules = [\"{}/rules/*.toml\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [crawlers]\ndns_servers = [\"{dns}\"]\ndns_budget = \"200ms\"\ndns_timeout = \"3s\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
}

/// What the upstream was told about a request from `ip` (as reported by
/// the trusted proxy on 127.0.0.1) with this user agent.
async fn classify(
    usher: &Usher,
    ip: Option<&str>,
    ua: &str,
) -> (u16, Option<String>, Option<String>) {
    let mut req = Request::get(usher.url("/page"))
        .header("user-agent", ua)
        .header("accept-language", "en");
    if let Some(ip) = ip {
        req = req.header("x-forwarded-for", ip);
    }
    let (parts, body) = send(req.body(full("")).unwrap()).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    (
        parts.status.as_u16(),
        label(&seen, "x-usher-class").map(str::to_owned),
        label(&seen, "x-usher-reasons").map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn crawler_claims_are_verified_or_called_spoofed() {
    let (dns, _) = dns_server(zone()).await;
    let up = upstream(echo).await;
    let usher = Usher::start(&crawler_config(&up, dns));

    // From 127.0.0.1 (the socket peer, no forwarding header): spoofed.
    let (status, class, reasons) = classify(&usher, None, GOOGLEBOT).await;
    assert_eq!(status, 200, "the default posture forwards");
    assert_eq!(class.as_deref(), Some("malicious_bot"));
    assert!(reasons.unwrap().contains("spoofed-crawler"));

    // From Google's published ranges (rules/crawlers/google.txt): verified
    // without asking DNS.
    let (_, class, reasons) = classify(&usher, Some("66.249.66.1"), GOOGLEBOT).await;
    assert_eq!(class.as_deref(), Some("service_client"));
    assert_eq!(reasons.as_deref(), Some("verified-crawler"));
    let (_, class, _) = classify(&usher, Some("2001:4860:4801:10::1"), GOOGLEBOT).await;
    assert_eq!(class.as_deref(), Some("service_client"));

    // Forward-confirmed reverse DNS, over IPv4 and IPv6.
    for real in ["203.0.113.7", "2001:db8::7", "203.0.113.13"] {
        let (_, class, _) = classify(&usher, Some(real), GOOGLEBOT).await;
        assert_eq!(
            class.as_deref(),
            Some("service_client"),
            "{real}: PTR and A agree"
        );
    }
    // A name that merely contains Google's domain, a PTR record that
    // resolves elsewhere, a user-triggered fetcher's name, one label
    // holding a dot, and no PTR at all.
    for forged in [
        "203.0.113.8",
        "203.0.113.9",
        "203.0.113.12",
        "203.0.113.11",
        "198.51.100.20",
    ] {
        let (_, class, _) = classify(&usher, Some(forged), GOOGLEBOT).await;
        assert_eq!(class.as_deref(), Some("malicious_bot"), "{forged}");
    }

    // The same addresses without a crawler's user agent are nobody special.
    let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0";
    let (_, class, _) = classify(&usher, Some("203.0.113.8"), browser).await;
    assert_eq!(class.as_deref(), Some("public_visitor"));

    let metrics = usher.metrics().await;
    promtool_check(&metrics);
    let count = |metric: &str, result: &str| {
        sample(&metrics, &format!("{metric}{{result=\"{result}\"}}")).unwrap_or(0.0)
    };
    let claims = "usher_crawler_verifications_total";
    assert_eq!(count(claims, "verified"), 5.0);
    assert_eq!(count(claims, "spoofed"), 6.0);
    let lookups = "usher_crawler_dns_lookups_total";
    assert_eq!(count(lookups, "confirmed"), 3.0);
    assert_eq!(count(lookups, "refuted"), 6.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_dns_costs_a_request_at_most_the_budget_and_is_asked_once() {
    let (dns, asked) = dns_server(zone()).await;
    let up = upstream(echo).await;
    let usher = Usher::start(&crawler_config(&up, dns));
    let ptr = reverse_name("203.0.113.10".parse().unwrap());

    // The DNS server takes 800 ms; the budget is 200 ms. Twenty requests
    // at once go on without an answer: not trusted, only scored, never
    // called spoofers; and DNS is asked once for all of them.
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let url = usher.url("/page");
        all.spawn(async move {
            let req = Request::get(url)
                .header("user-agent", GOOGLEBOT)
                .header("x-forwarded-for", "203.0.113.10")
                .body(full(""))
                .unwrap();
            let (_, body) = send(req).await;
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        });
    }
    let mut unconfirmed = 0;
    while let Some(seen) = all.join_next().await {
        let seen = seen.unwrap();
        let reasons = label(&seen, "x-usher-reasons").unwrap_or_default();
        assert!(!reasons.contains("spoofed-crawler"), "{reasons}");
        if reasons.contains("unconfirmed-crawler") {
            unconfirmed += 1;
        }
    }
    assert!(unconfirmed > 0, "the first requests did not wait for DNS");

    // The lookup finished in the background: a later request is verified
    // from usher's cache.
    let mut verified = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, class, _) = classify(&usher, Some("203.0.113.10"), GOOGLEBOT).await;
        if class.as_deref() == Some("service_client") {
            verified = true;
            break;
        }
    }
    assert!(verified, "the background lookup filled the cache");
    for _ in 0..5 {
        let (_, class, _) = classify(&usher, Some("203.0.113.10"), GOOGLEBOT).await;
        assert_eq!(class.as_deref(), Some("service_client"));
    }
    // The DNS answers had TTL 0, so only usher's own cache and singleflight
    // explain a single lookup: one forward question (the resolver may
    // repeat the slow reverse question on its own, as UDP clients do).
    let asked = asked.lock().unwrap().clone();
    let forward = asked
        .iter()
        .filter(|(n, t)| n == "crawl-203-0-113-10.googlebot.com" && *t == A)
        .count();
    assert_eq!(forward, 1, "{asked:?}");
    assert!(asked.iter().any(|(n, t)| *n == ptr && *t == PTR));
    let metrics = usher.metrics().await;
    assert!(
        sample(
            &metrics,
            "usher_crawler_verifications_total{result=\"unknown\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_dns_server_leaves_claims_unconfirmed() {
    // A port with nobody answering.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = silent.local_addr().unwrap();
    let up = upstream(echo).await;
    let usher = Usher::start(&crawler_config(&up, dns));
    let (status, class, reasons) = classify(&usher, Some("203.0.113.50"), GOOGLEBOT).await;
    assert_eq!(status, 200);
    assert_ne!(class.as_deref(), Some("service_client"));
    let reasons = reasons.unwrap_or_default();
    assert!(!reasons.contains("spoofed-crawler"), "{reasons}");
    assert!(reasons.contains("unconfirmed-crawler"), "{reasons}");
    drop(silent);
}
