//! Admission before parsing, over real sockets: connections are counted at accept (in total
//! and per address) and closed at once past the limits, a request head must arrive within the
//! header timeout, and an idle kept-alive connection is closed after it. Clients from other
//! addresses of 127.0.0.0/8 stand for other users.

use std::time::Duration;

use rollcall_server::config::Security;
use rollcall_server::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::server::{start, tcp_from, Client, TestServer};

/// True once the server closed `stream` (end of stream or reset), without waiting.
fn closed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Waits until `count(streams)` holds, polling every 20 ms, up to `within`.
async fn wait_until(
    streams: &[TcpStream],
    within: Duration,
    done: impl Fn(usize) -> bool,
) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = streams.iter().filter(|s| closed(s)).count();
        if done(n) || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn server(security: Security, header_timeout: Duration) -> TestServer {
    start(Config {
        header_read_timeout: header_timeout,
        security,
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn silent_connections_from_one_address_are_cut_to_its_limit_at_once_then_timed_out() {
    let header_timeout = Duration::from_secs(3);
    let server = server(
        Security {
            max_conns_per_ip: 32,
            ..Security::default()
        },
        header_timeout,
    )
    .await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // All but 32 are closed at accept, long before the header timeout.
    let cut = wait_until(&silent, header_timeout, |n| n >= 1000 - 32).await;
    assert_eq!(cut, 1000 - 32, "closed at accept");
    assert!(started.elapsed() < header_timeout);
    // Meanwhile another client connects and joins.
    let mut fresh = Client::connect_from(&server, "127.0.0.2", "vsn=2.0.0&user_id=fresh")
        .await
        .expect("another address connects");
    fresh.join("room:a", json!({})).await;
    // The 32 that were let in are closed by the header timeout.
    let all = wait_until(&silent, header_timeout + Duration::from_secs(5), |n| {
        n == 1000
    })
    .await;
    assert_eq!(all, 1000, "closed by the header timeout");
    fresh.sync().await;
}

#[tokio::test]
async fn a_request_sent_byte_by_byte_is_closed_by_the_header_timeout() {
    let header_timeout = Duration::from_secs(1);
    let server = server(Security::default(), header_timeout).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let request = b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\n";
    let started = Instant::now();
    let mut sent = 0;
    let mut rest = [0u8; 64];
    for byte in request.iter().cycle().take(200) {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        // A byte every 50 ms, until the server closes (or answers, which it does only to
        // close).
        if tokio::time::timeout(Duration::from_millis(50), slow.read(&mut rest))
            .await
            .is_ok()
        {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(sent < 200, "still open after 10 s of trickling");
    assert!(
        elapsed >= header_timeout - Duration::from_millis(100),
        "closed after {elapsed:?}, before the timeout"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_when_idle_past_the_timeout() {
    let header_timeout = Duration::from_secs(1);
    let server = server(Security::default(), header_timeout).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("\"status\":\"ok\"") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    let end = tokio::time::timeout(header_timeout + Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the idle connection was never closed");
    assert!(matches!(end, Ok(0) | Err(_)));
    assert!(idle_since.elapsed() >= header_timeout - Duration::from_millis(100));
}

#[tokio::test]
async fn past_the_node_limit_every_address_is_refused_until_connections_end() {
    let server = server(
        Security {
            max_conns: Some(20),
            ..Security::default()
        },
        Duration::from_secs(1),
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // The 21st, from another address, is closed at accept (or answered 503).
    let mut refused = tcp_from("127.0.0.2", server.addr).await;
    refused
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    // Once the header timeout has closed the silent ones, connections are accepted again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match Client::connect_from(&server, "127.0.0.2", "vsn=2.0.0&user_id=later").await {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("still refused: {e}"),
        }
    };
    client.join("room:a", json!({})).await;
    drop(silent);
}
