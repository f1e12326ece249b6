//! The long-poll transport with raw HTTP requests on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::server::{
    http, keys, longpoll_get, longpoll_open, longpoll_post, start, within, Client,
};
use base64::Engine;
use rollcall_server::Config;
use serde_json::{json, Value};

fn config(window_ms: u64) -> Config {
    Config {
        longpoll_window: Duration::from_millis(window_ms),
        ..Config::default()
    }
}

/// Polls until `n` messages were collected (each poll has the HTTP deadline).
async fn poll_messages(addr: SocketAddr, token: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = longpoll_get(addr, &format!("vsn=2.0.0&token={token}")).await;
        assert!(resp["status"] == 200 || resp["status"] == 204, "{resp}");
        for m in resp["messages"].as_array().unwrap() {
            out.push(serde_json::from_str(m.as_str().expect("messages are strings")).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn a_get_without_session_opens_one_with_410_and_a_token() {
    let server = start(config(10_000)).await;
    let token = longpoll_open(server.addr, "vsn=2.0.0").await;
    assert!(!token.is_empty());
}

#[tokio::test]
async fn an_unsupported_vsn_gets_status_403() {
    let server = start(config(10_000)).await;
    assert_eq!(
        longpoll_get(server.addr, "vsn=9.0.0").await,
        json!({"status": 403})
    );
}

#[tokio::test]
async fn a_posted_join_is_answered_in_the_next_polls_as_strings() {
    let server = start(config(10_000)).await;
    let token = longpoll_open(server.addr, "vsn=2.0.0&user_id=poller").await;
    let resp = longpoll_post(
        server.addr,
        &token,
        "application/x-ndjson",
        r#"["1","1","room:lp","phx_join",{"meta":{"via":"lp"}}]"#,
    )
    .await;
    assert_eq!(resp, json!({"status": 200}));
    let msgs = poll_messages(server.addr, &token, 3).await;
    assert_eq!(
        msgs[0],
        json!(["1", "1", "room:lp", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(msgs[1][3], "presence_state");
    assert_eq!(msgs[2][3], "presence_diff");
    assert_eq!(keys(&msgs[2][4]["joins"]), vec!["poller"]);
}

#[tokio::test]
async fn a_plain_body_is_one_frame_and_the_token_param_works() {
    let server = start(config(10_000)).await;
    let token = longpoll_open(server.addr, "vsn=2.0.0").await;
    let (_, _, body) = http(
        server.addr,
        "POST",
        &format!("/socket/longpoll?vsn=2.0.0&token={token}"),
        &[("content-type", "application/json")],
        br#"[null,"5","phoenix","heartbeat",{}]"#,
    )
    .await;
    assert_eq!(body, r#"{"status":200}"#);
    let msgs = poll_messages(server.addr, &token, 1).await;
    assert_eq!(
        msgs[0],
        json!([null, "5", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
}

#[tokio::test]
async fn a_poll_with_nothing_to_say_answers_204_after_the_window() {
    let server = start(config(200)).await;
    let token = longpoll_open(server.addr, "vsn=2.0.0").await;
    let resp = longpoll_get(server.addr, &format!("vsn=2.0.0&token={token}")).await;
    assert_eq!(resp["status"], 204);
    assert_eq!(resp["token"], json!(token));
    assert_eq!(resp["messages"], json!([]));
}

#[tokio::test]
async fn a_post_without_a_session_gets_410() {
    let server = start(config(10_000)).await;
    let resp = longpoll_post(server.addr, "no-such-token", "application/x-ndjson", "[]").await;
    assert_eq!(resp, json!({"status": 410}));
}

#[tokio::test]
async fn only_the_first_100_ndjson_lines_are_processed() {
    let server = start(config(300)).await;
    let token = longpoll_open(server.addr, "vsn=2.0.0").await;
    let lines: Vec<String> = (1..=101)
        .map(|i| format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#))
        .collect();
    let resp = longpoll_post(
        server.addr,
        &token,
        "application/x-ndjson",
        &lines.join("\n"),
    )
    .await;
    assert_eq!(resp, json!({"status": 200}));
    let mut refs = Vec::new();
    within("a poll with nothing left to say", async {
        loop {
            let resp = longpoll_get(server.addr, &format!("vsn=2.0.0&token={token}")).await;
            if resp["status"] == 204 {
                break;
            }
            for m in resp["messages"].as_array().unwrap() {
                let v: Value = serde_json::from_str(m.as_str().unwrap()).unwrap();
                refs.push(v[1].as_str().unwrap().to_string());
            }
        }
    })
    .await;
    assert_eq!(refs.len(), 100);
    assert_eq!(refs.last().map(String::as_str), Some("100"));
}

#[tokio::test]
async fn base64_ndjson_lines_are_binary_frames() {
    let server = start(config(10_000)).await;
    let mut ws = Client::user(&server, "ws").await;
    ws.join("room:b64", json!({})).await;
    ws.sync().await;
    let token = longpoll_open(server.addr, "vsn=2.0.0&user_id=lp").await;
    longpoll_post(
        server.addr,
        &token,
        "application/x-ndjson",
        r#"["1","1","room:b64","phx_join",{}]"#,
    )
    .await;
    poll_messages(server.addr, &token, 3).await;
    let mut frame = vec![0u8, 1, 1, 8, 4];
    frame.extend_from_slice(b"12room:b64blob");
    frame.extend_from_slice(&[9, 8, 7]);
    let line = base64::engine::general_purpose::STANDARD.encode(&frame);
    longpoll_post(server.addr, &token, "application/x-ndjson", &line).await;
    // Skip the poller's presence diff; the relay is the first binary frame.
    within("the relayed binary frame", async {
        loop {
            if let tokio_tungstenite::tungstenite::Message::Binary(bytes) = ws.recv().await {
                assert_eq!(&bytes[bytes.len() - 3..], &[9, 8, 7]);
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_unpolled_session_expires_and_its_presence_leaves() {
    let server = start(config(200)).await;
    let mut ws = Client::user(&server, "ws").await;
    ws.join("room:exp", json!({})).await;
    ws.sync().await;
    let token = longpoll_open(server.addr, "vsn=2.0.0&user_id=gone").await;
    longpoll_post(
        server.addr,
        &token,
        "application/x-ndjson",
        r#"["1","1","room:exp","phx_join",{}]"#,
    )
    .await;
    let joined = ws.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&joined[4]["joins"]), vec!["gone"]);
    // No more polls: after 1.5 × window the session closes and the member leaves.
    let left = within("the unpolled session's member to leave", async {
        loop {
            let frames = ws.sync().await;
            if let Some(d) = frames
                .into_iter()
                .find(|f| f[3] == "presence_diff" && f[4]["leaves"] != json!({}))
            {
                break d;
            }
        }
    })
    .await;
    assert_eq!(keys(&left[4]["leaves"]), vec!["gone"]);
    // The old token now opens a new session.
    let resp = longpoll_get(server.addr, &format!("vsn=2.0.0&token={token}")).await;
    assert_eq!(resp["status"], 410);
    assert_ne!(resp["token"], json!(token));
}

#[tokio::test]
async fn options_answers_the_cors_preflight() {
    let server = start(config(10_000)).await;
    let (status, headers, _) = http(
        server.addr,
        "OPTIONS",
        "/socket/longpoll",
        &[("access-control-request-headers", "x-phoenix-longpoll-token")],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("access-control-allow-origin").as_deref(), Some("*"));
    assert_eq!(
        get("access-control-allow-headers").as_deref(),
        Some("x-phoenix-longpoll-token")
    );
    assert!(get("access-control-allow-methods")
        .unwrap()
        .contains("post"));
}

#[tokio::test]
async fn a_client_that_abandons_its_poll_still_expires_and_leaves() {
    use tokio::io::AsyncWriteExt;
    let server = start(config(500)).await;
    let mut ws = Client::user(&server, "ws").await;
    ws.join("room:abandon", json!({})).await;
    ws.sync().await;
    let token = longpoll_open(server.addr, "vsn=2.0.0&user_id=quitter").await;
    longpoll_post(
        server.addr,
        &token,
        "application/x-ndjson",
        r#"["1","1","room:abandon","phx_join",{}]"#,
    )
    .await;
    let joined = ws.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&joined[4]["joins"]), vec!["quitter"]);
    // Drain the join's answers so the next poll waits.
    let resp = longpoll_get(server.addr, &format!("vsn=2.0.0&token={token}")).await;
    assert_eq!(resp["status"], 200);
    // A poll the browser aborts (page closed): the request arrives, then the connection goes.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!("GET /socket/longpoll?vsn=2.0.0&token={token} HTTP/1.1\r\nhost: x\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tcp);
    // Unpolled from now on: within 1.5 × window (plus a sweep) the member must leave.
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frames = ws.sync().await;
            if let Some(d) = frames
                .into_iter()
                .find(|f| f[3] == "presence_diff" && f[4]["leaves"] != json!({}))
            {
                break d;
            }
        }
    })
    .await
    .expect("the abandoned session never expired: its member is listed forever");
    assert_eq!(keys(&left[4]["leaves"]), vec!["quitter"]);
}

#[tokio::test]
async fn a_session_that_falls_too_far_behind_is_closed_like_a_slow_websocket() {
    let server = start(Config {
        // About eight of the frames below.
        max_queued_bytes: 8 * (64 + 80),
        ..config(10_000)
    })
    .await;
    let token = longpoll_open(server.addr, "vsn=2.0.0&user_id=laggard").await;
    longpoll_post(
        server.addr,
        &token,
        "application/x-ndjson",
        r#"["1","1","room:lag","phx_join",{}]"#,
    )
    .await;
    let mut ws = Client::user(&server, "talker").await;
    let join_ref = ws.join("room:lag", json!({})).await;
    // Far more frames than a connection may have queued, one at a time (no burst), and no
    // poll meanwhile.
    for i in 0..40 {
        ws.push(&join_ref, "room:lag", "say", json!({"i": i})).await;
        ws.sync().await;
    }
    // The session is closed as too slow: its polls end with 410, and the client reconnects
    // for a fresh presence_state, instead of the server holding every frame for it.
    let mut delivered = 0;
    let status = within("a poll that is not a 200", async {
        loop {
            let resp = longpoll_get(server.addr, &format!("vsn=2.0.0&token={token}")).await;
            match resp["status"].as_u64() {
                Some(200) => delivered += resp["messages"].as_array().map_or(0, Vec::len),
                other => break other,
            }
        }
    })
    .await;
    assert_eq!(status, Some(410), "after {delivered} frames");
    assert!(
        delivered < 40,
        "all {delivered} frames were held for the session"
    );
}
