//! Origins, rate limits and room limits over real sockets on 127.0.0.1.

use crate::support::server::{http, keys, start, Client, TestServer};
use rollcall_server::config::parse_origins;
use rollcall_server::config::Security;
use rollcall_server::security::limits::RateLimit;
use rollcall_server::Config;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn with_security(security: Security) -> TestServer {
    start(Config {
        security,
        ..Config::default()
    })
    .await
}

/// Opens a WebSocket with an `Origin` header; returns the HTTP status of the answer.
async fn ws_status_with_origin(server: &TestServer, origin: Option<&str>) -> u16 {
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.addr);
    let mut req = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

fn origins() -> Security {
    Security {
        allowed_origins: parse_origins("https://app.example.com,https://*.example.org"),
        ..Security::default()
    }
}

#[tokio::test]
async fn a_websocket_from_a_disallowed_origin_is_refused_with_403() {
    let server = with_security(origins()).await;
    assert_eq!(
        ws_status_with_origin(&server, Some("https://evil.com")).await,
        403
    );
    assert_eq!(
        ws_status_with_origin(&server, Some("https://app.example.com.evil.com")).await,
        403
    );
}

#[tokio::test]
async fn a_websocket_from_an_allowed_origin_or_without_origin_connects() {
    let server = with_security(origins()).await;
    assert_eq!(
        ws_status_with_origin(&server, Some("https://app.example.com")).await,
        101
    );
    assert_eq!(
        ws_status_with_origin(&server, Some("https://eu.example.org")).await,
        101
    );
    assert_eq!(ws_status_with_origin(&server, None).await, 101);
}

#[tokio::test]
async fn a_longpoll_from_a_disallowed_origin_gets_status_403() {
    let server = with_security(origins()).await;
    let (status, _, body) = http(
        server.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0",
        &[("origin", "https://evil.com")],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"status": 403})
    );
    let (_, _, body) = http(
        server.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0",
        &[("origin", "https://app.example.com")],
        b"",
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["status"],
        410
    );
}

/// A bucket that does not refill within a test: exactly `burst` messages pass.
fn no_refill(burst: u32) -> RateLimit {
    RateLimit {
        per_second: 0.000_001,
        burst,
    }
}

#[tokio::test]
async fn events_past_the_burst_get_a_rate_limited_error_reply() {
    let server = with_security(Security {
        event_rate: no_refill(3),
        ..Security::default()
    })
    .await;
    let mut c = Client::user(&server, "flooder").await;
    // A join draws from the join allowance, not from the event bucket.
    let jr = c.join("room:r", json!({})).await;
    for _ in 0..3 {
        let r = c.push(&jr, "room:r", "ping", json!({})).await;
        let reply = c.recv_until(|v| v[1] == json!(r)).await;
        assert_eq!(reply[4]["status"], "ok");
    }
    let r = c.push(&jr, "room:r", "ping", json!({})).await;
    let reply = c.recv_until(|v| v[1] == json!(r)).await;
    assert_eq!(
        reply,
        json!([jr, r, "room:r", "phx_reply", {"status": "error", "response": {"reason": "rate limited"}}])
    );
    // Heartbeats are not limited: the connection stays usable for liveness.
    c.sync().await;
}

#[tokio::test]
async fn meta_updates_past_their_burst_get_a_rate_limited_error_reply() {
    let server = with_security(Security {
        meta_rate: no_refill(2),
        ..Security::default()
    })
    .await;
    let mut c = Client::user(&server, "fidget").await;
    let jr = c.join("room:r", json!({})).await;
    let mut statuses = Vec::new();
    for n in 0..3 {
        let r = c.push(&jr, "room:r", "track", json!({"n": n})).await;
        let reply = c.recv_until(|v| v[1] == json!(r)).await;
        statuses.push(reply[4].clone());
    }
    assert_eq!(statuses[0]["status"], "ok");
    assert_eq!(statuses[1]["status"], "ok");
    assert_eq!(
        statuses[2],
        json!({"status": "error", "response": {"reason": "rate limited"}})
    );
    // Other events still pass: the meta bucket is separate.
    let r = c.push(&jr, "room:r", "ping", json!({})).await;
    assert_eq!(c.recv_until(|v| v[1] == json!(r)).await[4]["status"], "ok");
    let list = server.tracker.list("room:r").await;
    assert_eq!(
        list["fidget"]["metas"][0]["n"], 1,
        "the limited update was not applied"
    );
}

#[tokio::test]
async fn sustained_abuse_closes_the_connection_with_1008_and_a_reason() {
    let server = with_security(Security {
        event_rate: no_refill(1),
        max_limited_in_a_row: 5,
        ..Security::default()
    })
    .await;
    let mut watcher = Client::user(&server, "watcher").await;
    watcher.join("room:r", json!({})).await;
    watcher.sync().await;
    let mut c = Client::user(&server, "abuser").await;
    let jr = c.join("room:r", json!({})).await;
    for _ in 0..10 {
        c.push(&jr, "room:r", "spam", json!({})).await;
    }
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 1008);
    assert_eq!(reason, "rate limited: too many messages");
    // Its presence leaves; the watcher sees it.
    let left = watcher
        .recv_until(|v| v[3] == "presence_diff" && v[4]["leaves"] != json!({}))
        .await;
    assert_eq!(keys(&left[4]["leaves"]), vec!["abuser"]);
}

#[tokio::test]
async fn a_join_of_a_full_room_is_refused_but_a_member_may_open_another_tab() {
    let server = with_security(Security {
        max_room_members: Some(2),
        ..Security::default()
    })
    .await;
    let mut a = Client::user(&server, "alice").await;
    a.join("room:small", json!({})).await;
    a.sync().await;
    let mut b = Client::user(&server, "bob").await;
    b.join("room:small", json!({})).await;
    b.sync().await;
    let mut c = Client::user(&server, "carol").await;
    c.send_json(json!(["1", "1", "room:small", "phx_join", {}]))
        .await;
    let reply = c.recv_until(|v| v[1] == "1").await;
    assert_eq!(
        reply,
        json!(["1", "1", "room:small", "phx_reply", {"status": "error", "response": {"reason": "room full"}}])
    );
    let mut a2 = Client::user(&server, "alice").await;
    a2.join("room:small", json!({})).await;
    // Another room is not affected.
    c.join("room:other", json!({})).await;
    let list = server.tracker.list("room:small").await;
    assert_eq!(keys(&list), vec!["alice", "bob"]);
}

/// Connects as `user`; the HTTP status and body of a refusal, or `None` when accepted.
async fn refusal(server: &TestServer, user: &str) -> Option<(u16, String)> {
    let url = format!(
        "ws://{}/socket/websocket?vsn=2.0.0&user_id={user}",
        server.addr
    );
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => None,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Some((
                resp.status().as_u16(),
                String::from_utf8_lossy(&body).into(),
            ))
        }
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

async fn abuse_until_closed(server: &TestServer, user: &str) {
    let mut c = Client::user(server, user).await;
    let jr = c.join("room:r", json!({})).await;
    for _ in 0..10 {
        c.push(&jr, "room:r", "spam", json!({})).await;
    }
    assert_eq!(c.expect_close().await.0, 1008);
}

#[tokio::test]
async fn a_key_closed_for_abuse_is_refused_with_429_until_its_penalty_ends() {
    let server = with_security(Security {
        event_rate: no_refill(1),
        max_limited_in_a_row: 5,
        abuse_penalty: std::time::Duration::from_secs(600),
        ..Security::default()
    })
    .await;
    abuse_until_closed(&server, "abuser").await;
    let (status, reason) = refusal(&server, "abuser").await.expect("refused");
    assert_eq!(status, 429);
    assert!(reason.starts_with("rate limited: try again in"), "{reason}");
    assert_eq!(refusal(&server, "someone-else").await, None);
    let (_, _, body) = http(
        server.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0&user_id=abuser",
        &[],
        b"",
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"status": 403}),
        "long-poll: the status phoenix.js reconnects on"
    );
}

#[tokio::test]
async fn with_no_abuse_penalty_a_closed_key_may_reconnect_at_once() {
    let server = with_security(Security {
        event_rate: no_refill(1),
        max_limited_in_a_row: 5,
        abuse_penalty: std::time::Duration::ZERO,
        ..Security::default()
    })
    .await;
    abuse_until_closed(&server, "abuser").await;
    assert_eq!(refusal(&server, "abuser").await, None);
}

#[tokio::test]
async fn heartbeats_between_refused_messages_do_not_end_the_run_that_closes_with_1008() {
    let server = with_security(Security {
        event_rate: no_refill(1),
        max_limited_in_a_row: 5,
        ..Security::default()
    })
    .await;
    let mut c = Client::user(&server, "sly").await;
    let jr = c.join("room:r", json!({})).await;
    // The join drew from its own allowance: the one event token goes to this push.
    let r = c.push(&jr, "room:r", "spam", json!({})).await;
    let reply = c.recv_until(|v| v[1] == json!(r)).await;
    assert_eq!(reply[4]["status"], "ok");
    // A heartbeat after every refused message: answering one is cheap, but it proves
    // nothing about the flood.
    for _ in 0..4 {
        let r = c.push(&jr, "room:r", "spam", json!({})).await;
        let reply = c.recv_until(|v| v[1] == json!(r)).await;
        assert_eq!(reply[4]["response"]["reason"], "rate limited");
        c.sync().await;
    }
    c.push(&jr, "room:r", "spam", json!({})).await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "rate limited: too many messages")
    );
}

#[tokio::test]
async fn the_presence_api_answers_429_past_the_rate_of_an_address() {
    let server = with_security(Security {
        api_rate: no_refill(3),
        ..Security::default()
    })
    .await;
    for _ in 0..3 {
        let (status, _, _) = http(server.addr, "GET", "/api/presence/room:a", &[], b"").await;
        assert_eq!(status, 200);
    }
    let (status, _, body) = http(server.addr, "GET", "/api/presence/room:a/count", &[], b"").await;
    assert_eq!(status, 429);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], rollcall_server::api::RATE_LIMITED);
}

#[tokio::test]
async fn broadcasts_answer_429_past_the_rate_of_an_address() {
    let server = with_security(Security {
        api_rate: no_refill(2),
        ..Security::default()
    })
    .await;
    let event = json!({"event": "news", "payload": {}}).to_string();
    let post = || {
        http(
            server.addr,
            "POST",
            "/api/broadcast/room:a",
            &[("content-type", "application/json")],
            event.as_bytes(),
        )
    };
    for _ in 0..2 {
        let (status, _, body) = post().await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, _, body) = post().await;
    assert_eq!(status, 429);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], rollcall_server::api::RATE_LIMITED);
}

#[tokio::test]
async fn long_poll_sessions_opened_past_the_rate_of_an_address_are_refused_for_now() {
    let server = with_security(Security {
        longpoll_open_rate: no_refill(3),
        ..Security::default()
    })
    .await;
    let open = || async {
        let (_, _, body) = http(server.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[], b"").await;
        serde_json::from_str::<Value>(&body).unwrap()
    };
    for _ in 0..3 {
        assert_eq!(open().await["status"], 410);
    }
    // 403 is what makes phoenix.js back off and retry (see REFUSED_FOR_NOW).
    assert_eq!(open().await, json!({"status": 403}));
    // A WebSocket from the same address is not a session: it connects.
    let mut ws = Client::user(&server, "ws").await;
    ws.sync().await;
}

#[tokio::test]
async fn joins_up_to_the_channel_limit_are_not_rate_limited_and_the_one_beyond_is_told_why() {
    // The default shapes (a burst of 100 events, 100 channels) without refill: a client that
    // reconnects and rejoins its 100 channels at once must keep its whole event burst.
    let server = start(Config {
        max_channels: 100,
        security: Security {
            event_rate: no_refill(100),
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let mut dashboard = Client::user(&server, "dashboard").await;
    for n in 0..101 {
        let r = format!("j{n}");
        dashboard
            .send_json(json!([r, r, format!("room:{n}"), "phx_join", {"track": false}]))
            .await;
    }
    for n in 0..100 {
        let r = format!("j{n}");
        let reply = dashboard.recv_until(|v| v[1] == json!(r)).await;
        assert_eq!(
            reply[4],
            json!({"status": "ok", "response": {}}),
            "join {n}"
        );
    }
    let beyond = dashboard.recv_until(|v| v[1] == "j100").await;
    assert_eq!(
        beyond,
        json!(["j100", "j100", "room:100", "phx_reply", {"status": "error", "response": {"reason": "too many channels joined"}}])
    );
    let r = dashboard.push("j0", "room:0", "hello", json!({})).await;
    assert_eq!(
        dashboard.recv_until(|v| v[1] == json!(r)).await[4],
        json!({"status": "ok", "response": {}}),
        "the event burst is still whole after the joins"
    );
}
