//! End-to-end: the real `usher` binary between real clients and a real
//! upstream, asserting on what crossed the wire.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn get_is_forwarded_with_labels_and_forwarding_headers() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, ""));
    let (status, body) = get(&usher.url("/products/7?color=red")).await;
    assert_eq!(status, 200);
    let seen = json(&body);
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["uri"], "/products/7?color=red");
    assert_eq!(
        label(&seen, "host"),
        Some(usher.proxy.to_string().as_str()),
        "Host preserved"
    );
    assert_eq!(label(&seen, "x-usher-class"), Some("public_visitor"));
    assert_eq!(label(&seen, "x-usher-score"), Some("0"));
    assert_eq!(label(&seen, "x-usher-reasons"), Some(""));
    assert_eq!(label(&seen, "x-usher-subject"), None);
    assert_eq!(label(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(label(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        label(&seen, "x-forwarded-host"),
        Some(usher.proxy.to_string().as_str())
    );

    let log = usher.wait_access_log(1).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let line = &log[0];
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/products/7", "queries stay out of the log");
    assert_eq!(line["status"], 200);
    assert_eq!(line["class"], "public_visitor");
    assert_eq!(line["action"], "forward");
    assert!(
        line["upstream_seconds"].as_f64().unwrap() <= line["duration_seconds"].as_f64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    const UP: u64 = 512 << 20;
    const DOWN: u64 = 256 << 20;
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let (parts, mut body) = req.into_parts();
        if parts.uri.path() == "/download" {
            return Response::new(Pattern::new(DOWN).boxed());
        }
        let (len, sum) = drain(&mut body).await;
        Response::new(full(format!("{len} {sum}")))
    })
    .await;
    let usher = Usher::start(&config(&up, "access_log = \"off\""));

    let req = Request::post(usher.url("/upload"))
        .body(Pattern::new(UP))
        .unwrap();
    let response = client::<Pattern>().request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&text),
        format!("{UP} {}", Pattern::checksum(UP)),
        "upstream received every byte, in order"
    );

    let req = Request::get(usher.url("/download")).body(full("")).unwrap();
    let response = client::<TestBody>().request(req).await.unwrap();
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, DOWN);

    let peak_kib = usher.peak_rss_kib();
    eprintln!("usher peak RSS: {peak_kib} KiB");
    assert!(
        peak_kib < 96 * 1024,
        "usher held {peak_kib} KiB at peak while streaming {} MiB: bodies are being buffered",
        (UP + DOWN) >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_and_forged_labels_never_reach_either_side() {
    let up = upstream(|req| async move {
        let mut response = echo(req).await;
        let h = response.headers_mut();
        h.insert("connection", "x-upstream-hop".parse().unwrap());
        h.insert("x-upstream-hop", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-upstream-kept", "yes".parse().unwrap());
        response
    })
    .await;
    let usher = Usher::start(&config(&up, ""));
    let request = "GET /p HTTP/1.1\r\nHost: site.example\r\nConnection: keep-alive, X-Client-Hop\r\n\
         X-Client-Hop: 1\r\nKeep-Alive: timeout=9\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         TE: trailers\r\nX-Usher-Class: paying_customer\r\nx-usher-score: -1000\r\n\
         X-USHER-REASONS: trusted\r\nX-Usher-Subject: admin\r\nX-Usher-Anything: 1\r\n\
         Connection: x-usher-class, x-usher-score, X-Usher-Reasons\r\n\
         X-Kept: yes\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (status_line, headers, body) = raw_exchange(usher.proxy, request.as_bytes()).await;
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    let seen = json(&Bytes::from(body));
    let names: Vec<&str> = seen["headers"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for banned in [
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "x-usher-anything",
        "x-usher-subject",
    ] {
        assert!(
            !names.contains(&banned),
            "{banned} reached the upstream: {names:?}"
        );
    }
    assert_eq!(
        seen["headers"]["x-usher-class"],
        serde_json::json!(["public_visitor"])
    );
    assert_eq!(seen["headers"]["x-usher-score"], serde_json::json!(["0"]));
    assert_eq!(seen["headers"]["x-usher-reasons"], serde_json::json!([""]));
    assert_eq!(label(&seen, "te"), Some("trailers"));
    assert_eq!(label(&seen, "x-kept"), Some("yes"));
    assert_eq!(label(&seen, "host"), Some("site.example"));

    let response_names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        !response_names.contains(&"x-upstream-hop"),
        "{response_names:?}"
    );
    assert!(
        !response_names.contains(&"keep-alive"),
        "{response_names:?}"
    );
    assert!(
        response_names.contains(&"x-upstream-kept"),
        "{response_names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_from_an_untrusted_peer_is_ignored_and_replaced() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, ""));
    let req = Request::get(usher.url("/"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-real-ip", "6.6.6.6")
        .header("true-client-ip", "6.6.6.6")
        .body(full(""))
        .unwrap();
    let (_, body) = send(req).await;
    let seen = json(&body);
    assert_eq!(label(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(label(&seen, "x-real-ip"), Some("127.0.0.1"));
    assert_eq!(label(&seen, "true-client-ip"), None);
    assert_eq!(label(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(label(&seen, "forwarded"), None);
    let log = usher.wait_access_log(1).await;
    assert_eq!(
        log[0]["client_ip"], "127.0.0.1",
        "spoofed address not believed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_from_a_trusted_proxy_names_the_client() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(
        &up,
        "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
    ));
    for (xff, client) in [
        ("198.51.100.7", "198.51.100.7"),
        ("6.6.6.6, 198.51.100.8, 10.1.2.3", "198.51.100.8"),
        ("garbage, 10.1.2.3", "10.1.2.3"),
        ("[2001:db8::5]:443", "2001:db8::5"),
    ] {
        let req = Request::get(usher.url("/"))
            .header("x-forwarded-for", xff)
            .header("x-forwarded-proto", "https")
            .body(full(""))
            .unwrap();
        let (_, body) = send(req).await;
        let seen = json(&body);
        assert_eq!(
            label(&seen, "x-forwarded-for").unwrap(),
            format!("{client}, 127.0.0.1"),
            "the upstream sees the resolved client, never the client's own claims"
        );
        assert_eq!(label(&seen, "x-real-ip"), Some(client));
        assert_eq!(
            label(&seen, "x-forwarded-proto"),
            Some("https"),
            "kept from a trusted proxy"
        );
        let log = usher.wait_access_log(1).await;
        let last = log.last().unwrap();
        assert_eq!(last["client_ip"], client, "for X-Forwarded-For {xff:?}");
        // Let the next request's log line be the last one.
        usher.stdout_clear();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_the_proxy() {
    let addr = websocket_echo().await;
    let usher = Usher::start(&format!("upstream = \"http://{addr}\""));
    let stream = tokio::net::TcpStream::connect(usher.proxy).await.unwrap();
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", usher.proxy), stream)
            .await
            .expect("websocket handshake through usher");
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "usher"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), &big[..]);
    let metrics = usher.metrics().await;
    assert_eq!(sample(&metrics, "usher_upgrades_active"), Some(1.0));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_prior_knowledge_client_is_served() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, ""));
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let mut responses = Vec::new();
    for i in 0..5 {
        let req = Request::post(usher.url(&format!("/h2/{i}")))
            .header("x-usher-subject", "admin")
            .header("x-usher-anything", "forged")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(full(vec![1u8; 100_000]))
            .unwrap();
        responses.push(h2.request(req));
    }
    for (i, response) in futures_util::future::join_all(responses)
        .await
        .into_iter()
        .enumerate()
    {
        let response = response.expect("h2 request through usher");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let seen = json(&response.into_body().collect().await.unwrap().to_bytes());
        assert_eq!(seen["uri"], format!("/h2/{i}"));
        assert_eq!(seen["version"], "HTTP/1.1", "upstream speaks HTTP/1.1");
        assert_eq!(seen["body_len"], 100_000);
        assert_eq!(label(&seen, "host"), Some(usher.proxy.to_string().as_str()));
        assert_eq!(label(&seen, "x-usher-class"), Some("public_visitor"));
        assert_eq!(label(&seen, "x-usher-subject"), None, "forged over HTTP/2");
        assert_eq!(label(&seen, "x-usher-anything"), None, "forged over HTTP/2");
        assert_eq!(seen["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(full("finished"))
    })
    .await;
    // Served by the accepting thread, and by worker threads (connections
    // are dealt round robin, so four land on every one of three).
    for (workers, requests) in [("1", 1), ("3", 4)] {
        let mut usher = Usher::start_args(
            &config(&up, "[timeouts]\nheader_read = \"1s\""),
            &["--workers", workers],
        );
        // An idle client that never sends a request must not hold up the
        // exit.
        let _silent = tokio::net::TcpStream::connect(usher.proxy).await.unwrap();
        let in_flight: Vec<_> = (0..requests)
            .map(|i| {
                let url = usher.url(&format!("/slow/{i}"));
                tokio::spawn(async move { get(&url).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        usher.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            tokio::net::TcpStream::connect(usher.proxy).await.is_err(),
            "no new connections once draining"
        );
        for request in in_flight {
            let (status, body) = request.await.unwrap();
            assert_eq!(status, 200, "{workers} workers");
            assert_eq!(body, "finished");
        }
        let exit = usher
            .wait(Duration::from_secs(10))
            .expect("usher exits after draining");
        assert!(exit.success(), "{exit:?}");
        let log = usher.access_log();
        assert_eq!(
            log.len(),
            requests,
            "the drained requests were logged before exit"
        );
        assert!(log.iter().all(|line| line["status"] == 200));
        assert!(
            usher.stderr().contains("all connections drained"),
            "{}",
            usher.stderr()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_and_metrics_by_class() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, ""));
    assert_eq!(get(&usher.admin_url("/healthz")).await.0, 200);
    assert_eq!(get(&usher.admin_url("/readyz")).await.0, 200);
    assert_eq!(get(&usher.admin_url("/nope")).await.0, 404);
    let (parts, _) = send(
        Request::post(usher.admin_url("/metrics"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 405);

    for _ in 0..3 {
        assert_eq!(get(&usher.url("/")).await.0, 200);
    }
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"usher_requests_total{action="forward",class="public_visitor"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"usher_request_duration_seconds_count{class="public_visitor"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "usher_classify_duration_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "usher_upstream_duration_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "usher_added_latency_seconds_count"),
        Some(3.0),
        "every forwarded request"
    );
    assert_eq!(
        sample(&metrics, "usher_tracked_clients_capacity"),
        Some(1_000_000.0),
        "the default state.capacity"
    );
    assert_eq!(
        sample(&metrics, r#"usher_build_info{version="0.1.0"}"#),
        Some(1.0)
    );
    assert!(sample(&metrics, "usher_connections_active").is_some());
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("usher_"), "unprefixed metric: {line}");
    }
    promtool_check(&metrics);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_pooled_and_reused() {
    use std::sync::atomic::Ordering::SeqCst;
    // Each worker keeps a pool of its own: sequential requests share one
    // upstream connection per worker.
    for workers in [1, 3] {
        let up = upstream(echo).await;
        let usher = Usher::start_args(
            &config(&up, "access_log = \"off\""),
            &["--workers", &workers.to_string()],
        );
        for _ in 0..20 {
            assert_eq!(get(&usher.url("/")).await.0, 200);
        }
        assert_eq!(
            up.connections.load(SeqCst),
            workers,
            "20 sequential requests over {workers} workers"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_gets_origin_form_and_always_a_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, ""));
    // What the upstream saw of one raw request, sent on its own connection.
    let seen = |raw: &'static str| {
        let proxy = usher.proxy;
        async move {
            let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
            stream.write_all(raw.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            let response = String::from_utf8(response).unwrap();
            // Each client hears its own version back.
            assert!(
                response.starts_with(&raw[raw.find("HTTP/").unwrap()..][..8]),
                "{response}"
            );
            assert_eq!(&response[8..13], " 200 ", "{response}");
            let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
            serde_json::from_str::<Value>(body).unwrap()
        }
    };
    // HTTP/1.0 may come without a Host: the upstream gets its own name.
    let old = seen("GET /plain?q=1 HTTP/1.0\r\n\r\n").await;
    assert_eq!(old["uri"], "/plain?q=1");
    assert_eq!(label(&old, "host"), Some(up.addr.to_string().as_str()));
    // An absolute-form target goes upstream in origin form; the client's
    // Host stays.
    let absolute = seen(
        "GET http://elsewhere.example/abs?x=1 HTTP/1.1\r\nHost: front.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(absolute["uri"], "/abs?x=1");
    assert_eq!(label(&absolute, "host"), Some("front.example"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstreams_closing_their_connections_lose_no_request() {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // One that says `Connection: close` every time.
    let closing = upstream(|_req| async {
        let mut response = Response::new(full("bye"));
        response
            .headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
        response
    })
    .await;
    let usher = Usher::start_args(&config(&closing, ""), &["--workers", "1"]);
    for _ in 0..10 {
        assert_eq!(get(&usher.url("/")).await, (200, Bytes::from("bye")));
    }
    assert_eq!(closing.connections.load(SeqCst), 10, "none was reused");

    // One that keeps the connection alive, then drops it silently a moment
    // later, as an upstream's idle timeout does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    let usher = Usher::start_args(
        &format!("upstream = \"http://{addr}\""),
        &["--workers", "1"],
    );
    for _ in 0..5 {
        assert_eq!(get(&usher.url("/")).await, (200, Bytes::from("ok")));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(SeqCst), 5, "each stale connection replaced");
    let metrics = usher.metrics().await;
    assert_eq!(
        sample(&metrics, r#"usher_upstream_errors_total{kind="reset"}"#),
        Some(0.0),
        "no request was lost to a closed connection"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, "[timeouts]\nheader_read = \"500ms\""));
    let mut stream = tokio::net::TcpStream::connect(usher.proxy).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "a slowloris connection was kept open past the header timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));

    // Silent sockets and a stalled HTTP/2 preface are cut off too.
    for opening in [
        &b""[..],
        b"PRI * HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(usher.proxy).await.unwrap();
        stream.write_all(opening).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{opening:?} kept a connection open");
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_400_and_usher_keeps_serving() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, ""));
    for garbage in [
        &b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ] {
        let (status_line, _, _) = raw_exchange(usher.proxy, garbage).await;
        assert!(
            status_line.starts_with("HTTP/1.1 400"),
            "{garbage:?} → {status_line}"
        );
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(get(&usher.url("/")).await.0, 200, "still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_length_headers_cannot_smuggle_a_request() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, ""));
    // Transfer-Encoding wins (RFC 9112 §6.3); the lying Content-Length and
    // the chunk framing must not reach the upstream.
    let request = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
        3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let (status_line, _, body) = raw_exchange(usher.proxy, request).await;
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    let seen = json(&Bytes::from(body));
    assert_eq!(seen["uri"], "/a");
    assert_eq!(seen["body_len"], 3);
    assert_ne!(label(&seen, "content-length"), Some("60"));
    assert_eq!(
        label(&seen, "transfer-encoding"),
        Some("chunked"),
        "re-framed by usher"
    );
    usher.wait_access_log(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = usher.access_log();
    assert!(
        log.iter().all(|l| l["path"] != "/smuggled"),
        "a request after `Connection: close` was served: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc7239_forwarded_is_read_when_configured() {
    let up = upstream(echo).await;
    let usher = Usher::start(&config(
        &up,
        "trusted_proxies = [\"127.0.0.1\"]\nclient_ip_header = \"forwarded\"",
    ));
    let req = Request::get(usher.url("/"))
        .header("forwarded", r#"for="[2001:db8::9]:4711";proto=https"#)
        .header("x-forwarded-for", "6.6.6.6")
        .body(full(""))
        .unwrap();
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, 200);
    let seen = json(&body);
    let log = usher.wait_access_log(1).await;
    assert_eq!(log[0]["client_ip"], "2001:db8::9");
    assert_eq!(
        label(&seen, "x-forwarded-for"),
        Some("2001:db8::9, 127.0.0.1"),
        "the unread X-Forwarded-For cannot smuggle 6.6.6.6 to the upstream"
    );
    assert_eq!(label(&seen, "forwarded"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_uploads_are_not_cut_by_the_response_deadline() {
    use tokio::io::AsyncWriteExt;
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, "[timeouts]\nresponse_header = \"500ms\""));
    let mut stream = tokio::net::TcpStream::connect(usher.proxy).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(&[b'x'; 10]).await.unwrap();
    }
    let (status_line, _, body) = raw_exchange_on(stream).await;
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    assert_eq!(json(&Bytes::from(body))["body_len"], 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_abandoning_its_upload_is_not_an_upstream_error() {
    use tokio::io::AsyncWriteExt;
    let up = upstream(echo).await;
    let usher = Usher::start(&config(&up, ""));
    let mut stream = tokio::net::TcpStream::connect(usher.proxy).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    let log = usher.wait_access_log(1).await;
    assert_eq!(log[0]["status"], 499, "{log:?}");
    assert_eq!(log[0]["error"], "client_aborted");
    let metrics = usher.metrics().await;
    assert_eq!(sample(&metrics, "usher_client_aborts_total"), Some(1.0));
    for kind in ["refused", "reset", "other", "protocol"] {
        assert_eq!(
            sample(
                &metrics,
                &format!("usher_upstream_errors_total{{kind=\"{kind}\"}}")
            ),
            Some(0.0),
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http10_upstream_does_not_downgrade_the_client() {
    let up = upstream(|req| async move {
        let mut response = echo(req).await;
        *response.version_mut() = http::Version::HTTP_10;
        response
    })
    .await;
    let usher = Usher::start(&config(&up, ""));
    let (status_line, _, _) = raw_exchange(
        usher.proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn added_latency_leaves_out_the_upstreams_time() {
    // An upstream that takes half a second: were its time not subtracted,
    // every added-latency sample would be over 0.5 s.
    let up = upstream(|req| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        echo(req).await
    })
    .await;
    let usher = Usher::start(&config(&up, ""));
    for _ in 0..3 {
        assert_eq!(get(&usher.url("/slow")).await.0, 200);
    }
    let metrics = usher.metrics().await;
    let upstream_fast = r#"usher_upstream_duration_seconds_bucket{le="0.25"}"#;
    assert_eq!(
        sample(&metrics, upstream_fast),
        Some(0.0),
        "the upstream was slow"
    );
    let added_small = r#"usher_added_latency_seconds_bucket{le="0.25"}"#;
    assert_eq!(sample(&metrics, added_small), Some(3.0), "usher was not");
    assert_eq!(
        sample(&metrics, "usher_added_latency_seconds_count"),
        Some(3.0)
    );
}
