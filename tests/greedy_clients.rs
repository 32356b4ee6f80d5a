//! Greedy clients against the real `usher` binary: oversized request
//! heads, more connections than `connections.max`, more HTTP/2 streams
//! than allowed. Each is refused cleanly, and usher keeps serving.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_heads_get_431_and_usher_keeps_serving() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(
        &up,
        "[connections]\nmax_header_bytes = 8192\nmax_headers = 20",
    ));
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Long: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..30)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for request in [long, many] {
        let (status_line, _, _) = raw_exchange(usher.proxy, request.as_bytes()).await;
        assert!(
            status_line.starts_with("HTTP/1.1 431"),
            "{} → {status_line}",
            &request[..40]
        );
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 0, "nothing went up");
    // Just under both limits is served.
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Long: {}\r\n{}\r\n",
        "a".repeat(6_000),
        (0..15)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let (status_line, _, _) = raw_exchange(usher.proxy, fits.as_bytes()).await;
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
}

/// Send a keep-alive request on a new connection and read its answer,
/// leaving the connection open.
async fn open_connection(usher: &Usher) -> TcpStream {
    let mut stream = TcpStream::connect(usher.proxy).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed");
        seen.extend_from_slice(&chunk[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{seen:?}");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_maximum_get_503_and_are_closed() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, "[connections]\nmax = 2"));
    let first = open_connection(&usher).await;
    let _second = open_connection(&usher).await;

    // The third is answered at once and closed.
    let answer = raw_until_closed(usher.proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"too_many_connections"}"#),
        "{answer}"
    );
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(&metrics, "usher_connections_refused_total"),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "usher_connections_active"), Some(2.0));

    // One goes: there is room again.
    drop(first);
    usher
        .wait_for_metric("usher_connections_active", |v| v == 1.0)
        .await;
    let _again = open_connection(&usher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_connection_gets_no_more_streams_than_allowed() {
    // The upstream counts the requests it holds at once.
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (h, m) = (holding.clone(), most.clone());
    let up = upstream(move |_req| {
        let (holding, most) = (h.clone(), m.clone());
        async move {
            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            holding.fetch_sub(1, Ordering::SeqCst);
            http::Response::new(full("ok"))
        }
    })
    .await;
    let usher = Usher::start(&config(&up, "[connections]\nh2_max_streams = 2"));
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    // A first request settles the connection: until the client has the
    // server's settings it may open streams past the limit, which the
    // server refuses.
    let first = h2.request(Request::get(usher.url("/")).body(full("")).unwrap());
    assert_eq!(first.await.expect("first request").status(), 200);
    let requests = (0..6).map(|i| {
        h2.request(
            Request::get(usher.url(&format!("/{i}")))
                .body(full(""))
                .unwrap(),
        )
    });
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.expect("served in turn").status(), 200);
    }
    // One connection, six requests, never more than two in flight.
    assert_eq!(most.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_gets_408_and_lets_go() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, "[timeouts]\nbody_idle = \"1s\""));

    // A steady trickle, each pause under body_idle, is served.
    let mut steady = TcpStream::connect(usher.proxy).await.unwrap();
    steady
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        steady.write_all(&[b'x'; 10]).await.unwrap();
    }
    let (status_line, _, _) = raw_exchange_on(steady).await;
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");

    // Ten bytes of a hundred, then nothing: 408, and the connection goes.
    let stalled = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789";
    let answer = raw_until_closed(usher.proxy, stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let log = usher.wait_access_log(2).await;
    assert_eq!(log[1]["status"], 408, "{log:?}");
    assert_eq!(log[1]["error"], "client_idle", "{log:?}");
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(&metrics, "usher_client_body_timeouts_total"),
        Some(1.0)
    );
    usher
        .wait_for_metric("usher_connections_active", |v| v == 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_stalled_after_an_early_answer_is_the_clients_fault() {
    // The upstream answers at once, without reading the upload, and
    // trickles its own body, each pause well under body_idle.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                for _ in 0..100 {
                    if s.write_all(b"1\r\nx\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    let usher = Usher::start(&format!(
        "upstream = \"http://{up}\"\n[timeouts]\nbody_idle = \"500ms\""
    ));
    // Ten bytes of a hundred, then nothing.
    let stalled = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789";
    let answer = raw_until_closed(usher.proxy, stalled).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let log = usher.wait_access_log(1).await;
    assert_eq!(log[0]["error"], "client_idle", "{log:?}");
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(&metrics, "usher_client_body_timeouts_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, r#"usher_upstream_errors_total{kind="body"}"#),
        Some(0.0),
        "the upstream did nothing wrong"
    );
    usher
        .wait_for_metric("usher_connections_active", |v| v == 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_rapid_reset_flood_is_cut_off() {
    // The upstream counts what reaches it.
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    let up = upstream(move |_req| {
        let reached = r.clone();
        async move {
            reached.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            http::Response::new(full("ok"))
        }
    })
    .await;
    let usher = Usher::start(&config(&up, ""));

    // Open a stream and cancel it at once, again and again (CVE-2023-44487).
    let tcp = TcpStream::connect(usher.proxy).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut opened = 0;
    for _ in 0..20_000 {
        let request = Request::get(format!("http://{}/", usher.proxy))
            .body(())
            .unwrap();
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        match client.send_request(request, false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
    }
    // usher ends the connection long before the flood does (after a few
    // hundred here), and little of it reaches the upstream.
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(ended.is_ok(), "the connection was left open");
    assert!(opened < 5_000, "{opened} streams opened and reset");
    assert!(
        reached.load(Ordering::SeqCst) <= 100,
        "{reached:?} reached the upstream"
    );
    // And serves everyone else as before.
    assert_eq!(get(&usher.url("/")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_tunnel_keeps_its_place_among_the_connections() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let addr = websocket_echo().await;
    let usher = Usher::start(&format!(
        "upstream = \"http://{addr}\"\n[connections]\nmax = 1"
    ));
    let stream = TcpStream::connect(usher.proxy).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/", usher.proxy), stream)
        .await
        .expect("websocket handshake through usher");
    ws.send(Message::text("hello")).await.unwrap();
    assert!(ws.next().await.is_some_and(|m| m.is_ok()));

    // The tunnel holds the only place: another connection is refused.
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let (status_line, _, _) = raw_exchange(usher.proxy, request).await;
    assert!(status_line.starts_with("HTTP/1.1 503"), "{status_line}");

    // Closed, it gives the place back.
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status_line, _, _) = raw_exchange(usher.proxy, request).await;
        if !status_line.starts_with("HTTP/1.1 503") {
            break;
        }
        assert!(Instant::now() < deadline, "the tunnel's place was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_http2_header_list_never_reaches_the_upstream() {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let up = upstream(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { http::Response::new(full("ok")) }
    })
    .await;
    let usher = Usher::start(&config(&up, "[connections]\nmax_header_bytes = 8192"));
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    // Settle the connection first, so both sides know the limits.
    let first = h2.request(Request::get(usher.url("/")).body(full("")).unwrap());
    assert_eq!(first.await.expect("a small request").status(), 200);
    let big = Request::get(usher.url("/big"))
        .header("x-long", "a".repeat(20_000))
        .body(full(""))
        .unwrap();
    // Answered 431, or refused as a stream or connection error.
    if let Ok(response) = h2.request(big).await {
        assert_eq!(response.status(), 431);
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "only the small one went up"
    );
    assert_eq!(get(&usher.url("/")).await.0, 200, "still serving");
}
