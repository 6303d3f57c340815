//! The listener on real loopback sockets: slow heads time out, the cap refuses, big heads are
//! refused, idle connections close, and a normal request still gets through.

use std::time::{Duration, Instant};

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

async fn start(limits: HttpLimits) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/v2/", get(|| async { "{}" }));
    tokio::spawn(serve(listener, router, limits));
    addr
}

fn quick() -> HttpLimits {
    HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..HttpLimits::default()
    }
}

/// Reads until EOF or an error (a reset), at most `limit`; returns what was read and when.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((out, started.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn get_base(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (body, _) = read_to_close(&mut s, Duration::from_secs(5)).await.unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn a_head_that_never_ends_is_closed_after_the_timeout_and_others_are_served() {
    let addr = start(quick()).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    assert!(get_base(addr).await.starts_with("HTTP/1.1 200"));
    let (_, after) = read_to_close(&mut slow, Duration::from_secs(3)).await.expect("closed");
    assert!(after < Duration::from_secs(2), "{after:?}");
}

#[tokio::test]
async fn a_kept_alive_connection_closes_when_idle() {
    let addr = start(quick()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (body, after) = read_to_close(&mut s, Duration::from_secs(3)).await.expect("closed");
    assert!(String::from_utf8_lossy(&body).starts_with("HTTP/1.1 200"));
    assert!(after >= Duration::from_millis(250), "{after:?}");
}

#[tokio::test]
async fn connections_over_the_cap_get_503_at_once() {
    let addr = start(HttpLimits { max_connections: 2, ..HttpLimits::default() }).await;
    let held = [TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let (body, after) = read_to_close(&mut third, Duration::from_secs(2)).await.expect("closed at once");
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let (_, json) = text.split_once("\r\n\r\n").unwrap();
    assert!(text.contains(&format!("Content-Length: {}\r\n", json.len())), "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(json).is_ok(), "{json}");
    assert!(after < Duration::from_secs(1));
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get_base(addr).await.starts_with("HTTP/1.1 200"), "a slot is free again");
}

#[tokio::test]
async fn a_head_over_the_limit_gets_431() {
    let addr = start(HttpLimits::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 << 10));
    let _ = s.write_all(big.as_bytes()).await;
    let (body, _) = read_to_close(&mut s, Duration::from_secs(3)).await.expect("closed");
    assert!(String::from_utf8_lossy(&body).starts_with("HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn http2_serves_and_closes_a_silent_connection() {
    let addr = start(HttpLimits { protocol: Protocol::Http2, ..quick() }).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = client.get(format!("http://{addr}/v2/")).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "{}");
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (_, after) = read_to_close(&mut silent, Duration::from_secs(3)).await.expect("closed");
    assert!(after >= Duration::from_millis(500), "{after:?}");
}
