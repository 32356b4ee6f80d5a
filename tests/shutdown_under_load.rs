//! SIGTERM in the middle of steady load, against the real `usher` binary:
//! every request usher accepted is answered in full before it exits, and
//! none is answered with an error. Requests it never accepted fail as they
//! must: to connect, once it stopped accepting, or on an idle keep-alive
//! connection it closed as the request went out (the race RFC 9112 §9.3.1
//! leaves to clients to retry); the access log shows none of those was
//! accepted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;

/// The connection closed before any answer came: a keep-alive connection
/// closed by the drain as the request went out.
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    use std::error::Error;
    e.source()
        .and_then(|s| s.downcast_ref::<hyper::Error>())
        .is_some_and(hyper::Error::is_incomplete_message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_load_loses_no_accepted_request() {
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        http::Response::new(full("done"))
    })
    .await;
    let mut usher = Usher::start_args(&config(&up, ""), &["--workers", "2"]);
    let client = client::<TestBody>();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (client, stop, url) = (client.clone(), stop.clone(), usher.url(&format!("/{i}")));
            tokio::spawn(async move {
                // (answered in full with 200, answered otherwise, not sent)
                let mut seen = (0usize, Vec::new(), 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let request = Request::get(&url).body(full("")).unwrap();
                    match client.request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.into_body().collect().await.map(|b| b.to_bytes()) {
                                Ok(body) if status == 200 && body == "done" => seen.0 += 1,
                                other => seen.1.push(format!("{status}: {other:?}")),
                            }
                        }
                        Err(e) if e.is_connect() || closed_before_answer(&e) => {
                            // Never accepted: refused, or sent on an idle
                            // connection the drain was closing.
                            seen.2 += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => seen.1.push(format!("{e:?}")),
                    }
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    usher.signal(libc::SIGTERM);
    let exit = usher
        .wait(Duration::from_secs(15))
        .expect("usher exits after draining");
    assert!(exit.success(), "{exit:?}");
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut wrong, mut refused) = (0, Vec::new(), 0);
    for task in tasks {
        let (ok, bad, not_sent) = task.await.unwrap();
        answered += ok;
        wrong.extend(bad);
        refused += not_sent;
    }
    assert!(wrong.is_empty(), "answered badly: {wrong:?}");
    assert!(
        answered > 100,
        "{answered} answered before and while draining"
    );
    assert!(refused > 0, "requests after the stop are refused");
    // Every request usher accepted was logged, and each was one of those
    // the clients got in full.
    let log = usher.access_log();
    assert_eq!(log.len(), answered, "accepted and answered must match");
    assert!(log.iter().all(|line| line["status"] == 200), "{log:?}");
}
