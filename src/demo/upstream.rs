//! The demo's stand-ins: an upstream that answers every request (401 to
//! logins, since no demo password is ever right) and a DNS server that
//! knows no name, so reverse-DNS crawler claims are refuted at once.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UdpSocket};

/// Start the upstream on an ephemeral loopback port.
pub async fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let status = if req.method() == Method::POST && req.uri().path() == "/login" {
                        StatusCode::UNAUTHORIZED
                    } else {
                        StatusCode::OK
                    };
                    let mut response = Response::new(Full::new(Bytes::from_static(b"demo\n")));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Start a DNS server on an ephemeral loopback port that answers every
/// question with NXDOMAIN.
pub async fn start_nxdomain_dns() -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            if n < 12 {
                continue;
            }
            // The header and question back, as a response (QR and RA
            // set, RD kept) with rcode 3 and no records.
            let Some(end) = question_end(&buf[..n]) else {
                continue;
            };
            let mut answer = buf[..end].to_vec();
            answer[2] = 0x80 | (buf[2] & 0x01);
            answer[3] = 0x83;
            answer[6..12].fill(0);
            let _ = socket.send_to(&answer, from).await;
        }
    });
    Ok(addr)
}

/// Where the first question of a DNS message ends.
fn question_end(msg: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        i += 1 + len;
    }
    let end = i + 5;
    (end <= msg.len()).then_some(end)
}
