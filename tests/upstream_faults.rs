//! Upstream faults, against the real `usher` binary and upstreams that
//! misbehave on purpose, from refusing to connect to stalling mid-body:
//! each is answered (502, 504) or cut off as it should be, counted by
//! kind, and leaves no client connection open.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a raw upstream does after its answer.
#[derive(Clone, Copy)]
enum Then {
    /// Closes the connection.
    HangUp,
    /// Resets it (RST, not FIN).
    Reset,
    /// Keeps it open and says nothing more.
    Stall,
}

/// A raw upstream that reads each request head and writes `answer`, then
/// does `then`.
async fn raw_upstream(answer: &'static [u8], then: Then) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                match then {
                    Then::HangUp => {}
                    Then::Reset => {
                        let _ = s.set_zero_linger();
                    }
                    Then::Stall => tokio::time::sleep(Duration::from_secs(60)).await,
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

/// The `error` of a JSON answer of usher's own.
fn error_of(answer: &str) -> String {
    let body = &answer[answer.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    json["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_refusing_connections_is_502_refused() {
    let (closed, _reserved) = refusing_addr();
    let usher = Usher::start(&format!("upstream = \"http://{closed}\""));
    let answer = ask(&usher).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(error_of(&answer), "bad_gateway");
    assert_eq!(errors(&usher.metrics().await, "refused"), Some(1.0));
    let log = usher.wait_access_log(1).await;
    assert_eq!(log[0]["status"], 502);
    assert_eq!(log[0]["error"], "refused");
    all_let_go(&usher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_accepts_is_504_connect_timeout() {
    // A listener with a zero backlog, its one slot taken: the kernel drops
    // further SYNs, so connecting hangs until usher's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let _slot = std::net::TcpStream::connect(addr).unwrap();
    let usher = Usher::start(&format!(
        "upstream = \"http://{addr}\"\n[timeouts]\nconnect = \"300ms\""
    ));
    let answer = ask(&usher).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert_eq!(error_of(&answer), "gateway_timeout");
    assert_eq!(errors(&usher.metrics().await, "connect_timeout"), Some(1.0));
    all_let_go(&usher).await;
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_first_byte_is_504_response_timeout() {
    // The request is read; the answer never starts.
    let up = raw_upstream(b"", Then::Stall).await;
    let usher = Usher::start(&format!(
        "upstream = \"http://{up}\"\n[timeouts]\nresponse_header = \"300ms\""
    ));
    let answer = ask(&usher).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert_eq!(error_of(&answer), "gateway_timeout");
    assert_eq!(
        errors(&usher.metrics().await, "response_timeout"),
        Some(1.0)
    );
    all_let_go(&usher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_hanging_up_or_resetting_before_answering_is_502_reset() {
    for then in [Then::HangUp, Then::Reset] {
        let up = raw_upstream(b"", then).await;
        let usher = Usher::start(&format!("upstream = \"http://{up}\""));
        let answer = ask(&usher).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert_eq!(error_of(&answer), "bad_gateway");
        assert_eq!(errors(&usher.metrics().await, "reset"), Some(1.0));
        all_let_go(&usher).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_response_is_502_protocol() {
    let up = raw_upstream(b"HTTP/1.1 2x0 NOT A STATUS\r\n\r\n", Then::HangUp).await;
    let usher = Usher::start(&format!("upstream = \"http://{up}\""));
    let answer = ask(&usher).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(errors(&usher.metrics().await, "protocol"), Some(1.0));
    all_let_go(&usher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_cut_off_or_reset_mid_body_is_cut_off_for_the_client_too() {
    for then in [Then::HangUp, Then::Reset] {
        // 100 bytes promised, 10 sent, then the upstream hangs up or resets.
        let up = raw_upstream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            then,
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
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_body_that_stalls_is_given_up_after_body_idle() {
    // 100 bytes promised, 10 sent, then nothing while the connection stays.
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        Then::Stall,
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
