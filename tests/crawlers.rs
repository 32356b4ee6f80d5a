//! End-to-end: crawler claims checked against published ranges and by
//! forward-confirmed reverse DNS, with a real DNS server on loopback (a
//! small one in this test) and the shipped crawler rules.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Request;
use tokio::net::UdpSocket;

const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// DNS answers by (name, type): PTR names or A addresses, and an optional
/// delay before answering.
#[derive(Clone, Default)]
struct Zone {
    ptr: HashMap<String, String>,
    a: HashMap<String, Ipv4Addr>,
    slow: HashMap<String, Duration>,
}

const PTR: u16 = 12;
const A: u16 = 1;

/// A loopback DNS server answering from `zone` (NXDOMAIN otherwise).
/// Counts the queries it received.
async fn dns_server(zone: Zone) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = queries.clone();
    let zone = Arc::new(zone);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let query = buf[..n].to_vec();
            let (socket, zone) = (socket.clone(), zone.clone());
            tokio::spawn(async move {
                let Some((name, qtype, question_end)) = parse_question(&query) else {
                    return;
                };
                if let Some(delay) = zone.slow.get(&name) {
                    tokio::time::sleep(*delay).await;
                }
                let answer: Option<Vec<u8>> = match qtype {
                    PTR => zone.ptr.get(&name).map(|host| encode_name(host)),
                    A => zone.a.get(&name).map(|ip| ip.octets().to_vec()),
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
                    out.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
                    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                    out.extend_from_slice(&rdata);
                }
                let _ = socket.send_to(&out, from).await;
            });
        }
    });
    (addr, queries)
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

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn reverse_name(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa")
}

fn zone() -> Zone {
    let mut z = Zone::default();
    let mut host = |ip: &str, name: &str, back: Option<&str>| {
        let ip: Ipv4Addr = ip.parse().unwrap();
        z.ptr.insert(reverse_name(ip), name.to_owned());
        if let Some(back) = back {
            z.a.insert(name.trim_end_matches('.').to_owned(), back.parse().unwrap());
        }
    };
    // A real crawler: the name is Google's and resolves back.
    host(
        "203.0.113.7",
        "crawl-203-0-113-7.googlebot.com.",
        Some("203.0.113.7"),
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
    z
}

fn crawler_config(up: &Upstream, dns: SocketAddr) -> String {
    config(
        up,
        &format!(
            "rules = [\"{}/rules/*.toml\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [crawlers]\ndns_servers = [\"{dns}\"]\ndns_budget = \"50ms\"\ndns_timeout = \"3s\"\n",
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
    assert!(reasons.unwrap().contains("verified-crawler"));
    let (_, class, _) = classify(&usher, Some("2001:4860:4801:10::1"), GOOGLEBOT).await;
    assert_eq!(class.as_deref(), Some("service_client"));

    // Forward-confirmed reverse DNS.
    let (_, class, _) = classify(&usher, Some("203.0.113.7"), GOOGLEBOT).await;
    assert_eq!(class.as_deref(), Some("service_client"), "PTR and A agree");
    for forged in ["203.0.113.8", "203.0.113.9", "198.51.100.20"] {
        let (_, class, _) = classify(&usher, Some(forged), GOOGLEBOT).await;
        assert_eq!(class.as_deref(), Some("malicious_bot"), "{forged}");
    }

    // The same addresses without a crawler's user agent are nobody special.
    let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0";
    let (_, class, _) = classify(&usher, Some("203.0.113.8"), browser).await;
    assert_eq!(class.as_deref(), Some("public_visitor"));

    let metrics = usher.metrics().await;
    promtool_check(&metrics);
    let count = |result: &str| {
        sample(
            &metrics,
            &format!("usher_crawler_verifications_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("verified"), 3.0);
    assert_eq!(count("spoofed"), 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_dns_costs_a_request_at_most_the_budget_and_answers_the_next() {
    let (dns, queries) = dns_server(zone()).await;
    let up = upstream(echo).await;
    let usher = Usher::start(&crawler_config(&up, dns));

    // The DNS server takes 800 ms; the budget is 50 ms. The first request
    // goes on without an answer: neither trusted nor blamed.
    let (_, class, reasons) = classify(&usher, Some("203.0.113.10"), GOOGLEBOT).await;
    assert_ne!(class.as_deref(), Some("service_client"));
    assert!(!reasons.unwrap_or_default().contains("spoofed-crawler"));

    // The lookup finished in the background: a later request is verified
    // from the cache.
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

    // Remembered: more requests ask DNS nothing more.
    let asked = queries.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        let (_, class, _) = classify(&usher, Some("203.0.113.10"), GOOGLEBOT).await;
        assert_eq!(class.as_deref(), Some("service_client"));
    }
    assert_eq!(queries.load(std::sync::atomic::Ordering::SeqCst), asked);
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
async fn a_dead_dns_server_leaves_claims_unknown() {
    // A port with nobody answering.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = silent.local_addr().unwrap();
    let up = upstream(echo).await;
    let usher = Usher::start(&crawler_config(&up, dns));
    let (status, class, reasons) = classify(&usher, Some("203.0.113.50"), GOOGLEBOT).await;
    assert_eq!(status, 200);
    assert_ne!(class.as_deref(), Some("service_client"));
    assert!(!reasons.unwrap_or_default().contains("spoofed-crawler"));
    drop(silent);
}
