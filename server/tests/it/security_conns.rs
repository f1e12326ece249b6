//! The per-address connection limit (`--max-conns-per-ip`) over real sockets on 127.0.0.1:
//! every test client has the same address, so the limit applies to all of them together.
//! Connections are counted at accept, so a connection over the limit is closed before its
//! request is read: it gets HTTP 429 with the reason only when its request had already arrived
//! ([`Refusal`] says which it was).

use std::time::Duration;

use crate::support::server::{http, start, Client, TestServer, DEADLINE};
use rollcall_server::config::Security;
use rollcall_server::Config;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn limited(max_conns_per_ip: usize) -> TestServer {
    start(Config {
        longpoll_window: Duration::from_millis(200),
        security: Security {
            max_conns_per_ip,
            ..Security::default()
        },
        ..Config::default()
    })
    .await
}

/// Tries a WebSocket connect: `Ok(client)`, or the refusal's HTTP status and body (status 0:
/// closed at accept without an answer).
async fn try_connect(server: &TestServer, user: &str) -> Result<Client, (u16, String)> {
    try_connect_via(server, user, None).await
}

/// Asserts a refusal for the per-address limit: 429 with the reason, or closed at accept.
fn assert_refused_per_address(refusal: Option<(u16, String)>, limit: usize) {
    match refusal {
        Some((429, reason)) => assert_eq!(
            reason,
            format!("too many connections from this address (limit {limit})")
        ),
        Some((0, _)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// [`try_connect`] through a proxy that says the client is `forwarded_for`.
async fn try_connect_via(
    server: &TestServer,
    user: &str,
    forwarded_for: Option<&str>,
) -> Result<Client, (u16, String)> {
    let url = format!(
        "ws://{}/socket/websocket?vsn=2.0.0&user_id={user}",
        server.addr
    );
    let mut req = url.into_client_request().expect("request");
    if let Some(client) = forwarded_for {
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Client::from_ws(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err((
                resp.status().as_u16(),
                String::from_utf8_lossy(&body).into(),
            ))
        }
        // Closed at accept before the request was read.
        Err(_) => Err((0, String::new())),
    }
}

/// Connects as soon as the server has given a slot back, within the deadline.
async fn connect_once_freed(server: &TestServer, user: &str) -> Client {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match try_connect(server, user).await {
            Ok(client) => return client,
            Err((429 | 0, _)) if tokio::time::Instant::now() < deadline => {
                // The slot is given back when the server side of the closed socket ends.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(refusal) => panic!("still refused after the deadline: {refusal:?}"),
        }
    }
}

async fn longpoll_open(server: &TestServer) -> Value {
    let (_, _, body) = http(server.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[], b"").await;
    serde_json::from_str(&body).expect("json")
}

#[tokio::test]
async fn the_connection_beyond_the_per_ip_limit_is_refused_with_429_and_a_reason() {
    let server = limited(2).await;
    let mut first = try_connect(&server, "a").await.expect("first accepted");
    let mut second = try_connect(&server, "b").await.expect("second accepted");
    assert_refused_per_address(try_connect(&server, "c").await.err(), 2);
    // The accepted ones are unaffected.
    first.sync().await;
    second.sync().await;
}

#[tokio::test]
async fn closing_a_connection_frees_its_slot() {
    let server = limited(1).await;
    let mut first = try_connect(&server, "a").await.expect("accepted");
    first.sync().await;
    assert_refused_per_address(try_connect(&server, "b").await.err(), 1);
    first.ws.close(None).await.expect("close");
    let mut next = connect_once_freed(&server, "b").await;
    next.sync().await;
}

#[tokio::test]
async fn longpoll_sessions_count_against_the_limit_until_they_end() {
    let server = limited(2).await;
    // The opening request's TCP connection is given back once its answer is sent; the
    // session keeps one slot.
    let opened = longpoll_open(&server).await;
    assert_eq!(opened["status"], 410, "{opened}");
    let mut ws = connect_once_freed(&server, "ws").await;
    ws.sync().await;
    // The session and the WebSocket hold both slots: a third connection is refused.
    assert_refused_per_address(try_connect(&server, "third").await.err(), 2);
    // Unpolled, the session expires after 1.5 × the 200 ms window and gives its slot back.
    let mut next = connect_once_freed(&server, "next").await;
    next.sync().await;
    ws.sync().await;
}

#[tokio::test]
async fn a_session_open_over_the_limit_answers_403_for_phoenix_js() {
    // With the limit checked by the connect check (the address comes from the proxy's
    // header), the open request itself is read and answered.
    let server = start(Config {
        longpoll_window: Duration::from_millis(200),
        security: Security {
            max_conns_per_ip: 1,
            trust_forwarded_for: true,
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let addr = server.addr;
    let open = |client: &'static str| async move {
        let (_, _, body) = http(
            addr,
            "GET",
            "/socket/longpoll?vsn=2.0.0",
            &[("x-forwarded-for", client)],
            b"",
        )
        .await;
        serde_json::from_str::<Value>(&body).expect("json")
    };
    assert_eq!(open("198.51.100.1").await["status"], 410);
    // Long-poll says 403: phoenix.js reconnects with backoff on it, and is stuck on 429.
    assert_eq!(open("198.51.100.1").await, json!({"status": 403}));
    assert_eq!(open("198.51.100.2").await["status"], 410);
}

#[tokio::test]
async fn without_a_limit_connections_are_not_counted() {
    let server = limited(0).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(
            try_connect(&server, &format!("u{i}"))
                .await
                .expect("accepted"),
        );
    }
    for c in &mut clients {
        c.sync().await;
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_limit() {
    let server = start(Config {
        security: Security {
            max_conns_per_ip: 1,
            trust_forwarded_for: true,
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    // The last entry is the one the proxy appended; earlier ones are the client's claims.
    let mut a = try_connect_via(&server, "a", Some("203.0.113.9, 198.51.100.1"))
        .await
        .expect("first from 198.51.100.1");
    let mut b = try_connect_via(&server, "b", Some("198.51.100.2"))
        .await
        .expect("first from 198.51.100.2");
    let again = try_connect_via(&server, "c", Some("10.9.9.9, 198.51.100.1")).await;
    assert_eq!(again.err().map(|e| e.0), Some(429));
    a.sync().await;
    b.sync().await;
}

#[tokio::test]
async fn an_untrusted_forwarded_for_header_is_ignored() {
    let server = limited(1).await;
    let mut first = try_connect_via(&server, "a", Some("198.51.100.1"))
        .await
        .expect("accepted");
    let second = try_connect_via(&server, "b", Some("198.51.100.2")).await;
    assert_refused_per_address(second.err(), 1);
    first.sync().await;
}
