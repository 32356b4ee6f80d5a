//! Upstream faults after the request is sent, against the real `usher`
//! binary and raw upstreams that misbehave on purpose: each is answered
//! or cut off as it should be, counted by kind, and leaves no client
//! connection open.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw upstream that reads each request head and answers `answer`, then
/// either hangs on (`hang`) or hangs up.
async fn raw_upstream(answer: &'static [u8], hang: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                if hang {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            });
        }
    });
    addr
}

/// What a client gets for `GET /`: the raw answer up to when usher closes
/// or resets the connection.
async fn ask(usher: &Usher) -> String {
    raw_until_closed(
        usher.proxy,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
}

/// Wait until no client connection is open.
async fn all_let_go(usher: &Usher) {
    usher
        .wait_for_metric("usher_connections_active", |v| v == 0.0)
        .await;
}

fn errors(metrics: &str, kind: &str) -> Option<f64> {
    sample(
        metrics,
        &format!(r#"usher_upstream_errors_total{{kind="{kind}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_response_is_502_protocol() {
    let up = raw_upstream(b"HTTP/1.1 2x0 NOT A STATUS\r\n\r\n", false).await;
    let usher = Usher::start(&format!("upstream = \"http://{up}\""));
    let answer = ask(&usher).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(errors(&usher.metrics().await, "protocol"), Some(1.0));
    all_let_go(&usher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_cut_off_mid_body_is_cut_off_for_the_client_too() {
    // 100 bytes promised, 10 sent, then the upstream hangs up.
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        false,
    )
    .await;
    let usher = Usher::start(&format!("upstream = \"http://{up}\""));
    let answer = ask(&usher).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.len() < 100, "the client must not get a whole body");
    let log = usher.wait_access_log(1).await;
    assert_eq!(log[0]["error"], "body", "{log:?}");
    assert_eq!(errors(&usher.metrics().await, "body"), Some(1.0));
    all_let_go(&usher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_body_that_stalls_is_given_up_after_body_idle() {
    // 100 bytes promised, 10 sent, then nothing while the connection stays.
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        true,
    )
    .await;
    let usher = Usher::start(&format!(
        "upstream = \"http://{up}\"\n[timeouts]\nbody_idle = \"300ms\""
    ));
    let answer = ask(&usher).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let log = usher.wait_access_log(1).await;
    assert_eq!(log[0]["error"], "body_timeout", "{log:?}");
    assert_eq!(errors(&usher.metrics().await, "body_timeout"), Some(1.0));
    all_let_go(&usher).await;
}
