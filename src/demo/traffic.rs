//! The demo's synthetic traffic: one task per persona, each sending its
//! kind of requests through the proxy at its own pace, as if from its own
//! address (the proxy trusts the demo's forwarding header).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Secrets;

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0";
const SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// Who sends what, how often.
struct Persona {
    ip: &'static str,
    every: Duration,
    method: http::Method,
    headers: Vec<(&'static str, String)>,
    /// Paths cycled through (`{n}` becomes a counter).
    path: &'static str,
}

fn personas(secrets: &Secrets) -> Vec<Persona> {
    let browser = |ua: &str| {
        vec![
            ("user-agent", ua.to_owned()),
            ("accept", "text/html,application/xhtml+xml".to_owned()),
            ("accept-language", "en-GB,en;q=0.8".to_owned()),
        ]
    };
    let account = |sub: &str, plan: &str, ua: &str| {
        let mut h = browser(ua);
        h.push((
            "authorization",
            format!("Bearer {}", token(&secrets.jwt, sub, plan)),
        ));
        h
    };
    let ms = Duration::from_millis;
    let get = http::Method::GET;
    vec![
        // People browsing anonymously.
        Persona {
            ip: "198.51.100.1",
            every: ms(1500),
            method: get.clone(),
            headers: browser(FIREFOX),
            path: "/products/{n}",
        },
        Persona {
            ip: "198.51.100.2",
            every: ms(2100),
            method: get.clone(),
            headers: browser(SAFARI),
            path: "/blog/{n}",
        },
        Persona {
            ip: "2001:db8:7::1",
            every: ms(1800),
            method: get.clone(),
            headers: browser(FIREFOX),
            path: "/",
        },
        // Accounts: free and paying.
        Persona {
            ip: "198.51.100.20",
            every: ms(1700),
            method: get.clone(),
            headers: account("alice", "free", FIREFOX),
            path: "/account",
        },
        Persona {
            ip: "198.51.100.30",
            every: ms(1300),
            method: get.clone(),
            headers: account("carol", "pro", SAFARI),
            path: "/reports/{n}",
        },
        // An integration with an API key.
        Persona {
            ip: "192.0.2.50",
            every: ms(900),
            method: get.clone(),
            headers: vec![
                ("user-agent", "acme-sync/2.4".to_owned()),
                ("x-api-key", secrets.api_key.clone()),
            ],
            path: "/api/orders?page={n}",
        },
        // Googlebot from Google's published ranges, and a spoofer.
        Persona {
            ip: "66.249.66.1",
            every: ms(2500),
            method: get.clone(),
            headers: vec![("user-agent", GOOGLEBOT.to_owned())],
            path: "/products/{n}",
        },
        Persona {
            ip: "203.0.113.77",
            every: ms(2000),
            method: get.clone(),
            headers: vec![("user-agent", GOOGLEBOT.to_owned())],
            path: "/products/{n}",
        },
        // A scraper on a timer.
        Persona {
            ip: "203.0.113.66",
            every: ms(40),
            method: get,
            headers: vec![("user-agent", "python-requests/2.32.3".to_owned())],
            path: "/products/{n}",
        },
        // A credential stuffer: forged tokens and guessed passwords.
        Persona {
            ip: "203.0.113.99",
            every: ms(250),
            method: http::Method::POST,
            headers: {
                let mut h = browser(FIREFOX);
                h.push((
                    "authorization",
                    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.Zm9yZ2Vk".to_owned(),
                ));
                h
            },
            path: "/login",
        },
    ]
}

/// A demo token signed with the demo's key.
fn token(secret: &[u8], sub: &str, plan: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let claims = serde_json::json!({
        "iss": "https://demo.usher.invalid/", "aud": "demo", "sub": sub, "plan": plan, "exp": exp,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// Start every persona; each stops when `stop` turns true.
pub fn start(
    proxy: SocketAddr,
    secrets: &Secrets,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    personas(secrets)
        .into_iter()
        .map(|p| {
            let (client, mut stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(p.every);
                let mut n = 0u64;
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = ticks.tick() => {}
                    }
                    n += 1;
                    let path = p.path.replace("{n}", &(n % 500).to_string());
                    let mut req = Request::builder()
                        .method(p.method.clone())
                        .uri(format!("http://{proxy}{path}"))
                        .header("x-forwarded-for", p.ip);
                    for (name, value) in &p.headers {
                        req = req.header(*name, value.as_str());
                    }
                    let Ok(req) = req.body(Full::new(Bytes::new())) else {
                        return;
                    };
                    // Fire and forget: the scraper does not wait for answers.
                    let client = client.clone();
                    tokio::spawn(async move {
                        if let Ok(response) = client.request(req).await {
                            let _ = response.into_body().collect().await;
                        }
                    });
                }
            })
        })
        .collect()
}
