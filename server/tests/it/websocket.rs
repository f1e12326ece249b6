//! The Phoenix Channels socket protocol over a real WebSocket on 127.0.0.1.

use std::time::Duration;

use crate::support::server::{http, start, start_default, Client};
use futures_util::SinkExt;
use rollcall_server::Config;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn heartbeat_gets_an_ok_reply_with_null_join_ref() {
    let server = start_default().await;
    let mut c = Client::connect(&server, "vsn=2.0.0").await;
    c.send_json(json!([null, "7", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
}

#[tokio::test]
async fn unsupported_vsn_is_refused_with_403() {
    let server = start_default().await;
    let url = format!("ws://{}/socket/websocket?vsn=3.0.0", server.addr);
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected HTTP 403, got {other}"),
    }
}

#[tokio::test]
async fn v1_json_clients_get_objects_without_join_ref() {
    let server = start_default().await;
    let mut c = Client::connect(&server, "vsn=1.0.0&user_id=u1").await;
    c.send_json(json!({"topic": "room:v1", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "room:v1", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "1"})
    );
    let state = c.recv_json().await;
    assert_eq!(state["event"], "presence_state");
    assert!(state.get("join_ref").is_none());
    let diff = c.recv_json().await;
    assert_eq!(diff["event"], "presence_diff");
    assert_eq!(diff["ref"], json!(null));
}

#[tokio::test]
async fn joining_an_unmatched_topic_replies_error_with_null_join_ref() {
    let server = start_default().await;
    let mut c = Client::connect(&server, "vsn=2.0.0").await;
    c.send_json(json!(["3", "3", "nope:1", "phx_join", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([null, "3", "nope:1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
}

#[tokio::test]
async fn events_on_a_topic_not_joined_reply_unmatched_topic() {
    let server = start_default().await;
    let mut c = Client::connect(&server, "vsn=2.0.0").await;
    c.send_json(json!(["1", "5", "room:x", "new_msg", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([null, "5", "room:x", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
}

#[tokio::test]
async fn leaving_a_topic_not_joined_replies_ok() {
    let server = start_default().await;
    let mut c = Client::connect(&server, "vsn=2.0.0").await;
    c.send_json(json!(["4", "4", "room:x", "phx_leave", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!(["4", "4", "room:x", "phx_reply", {"status": "ok", "response": {}}])
    );
}

#[tokio::test]
async fn leave_replies_ok_then_closes_the_channel() {
    let server = start_default().await;
    let mut c = Client::user(&server, "a").await;
    let jr = c.join("room:l", json!({})).await;
    c.sync().await;
    let r = c.push(&jr, "room:l", "phx_leave", json!({})).await;
    let frames = c.sync().await;
    assert_eq!(
        frames[0],
        json!([jr, r, "room:l", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(frames[1], json!([jr, jr, "room:l", "phx_close", {}]));
    // The channel is gone: events now get unmatched topic.
    let r = c.push(&jr, "room:l", "new_msg", json!({})).await;
    assert_eq!(
        c.recv_json().await,
        json!([null, r, "room:l", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
}

#[tokio::test]
async fn duplicate_join_closes_the_old_channel_after_the_new_reply() {
    let server = start_default().await;
    let mut c = Client::user(&server, "a").await;
    let old = c.join("room:d", json!({})).await;
    c.sync().await;
    c.send_json(json!(["9", "9", "room:d", "phx_join", {}]))
        .await;
    let frames = c.sync().await;
    assert_eq!(
        frames[0],
        json!(["9", "9", "room:d", "phx_reply", {"status": "ok", "response": {}}])
    );
    let close_at = frames
        .iter()
        .position(|f| f[3] == "phx_close")
        .expect("phx_close for the old join");
    assert!(close_at > 0);
    assert_eq!(
        frames[close_at],
        json!([old, old, "room:d", "phx_close", {}])
    );
    // The new channel is live under the new join_ref and pushes its state with it.
    assert!(frames
        .iter()
        .any(|f| f[0] == "9" && f[3] == "presence_state"));
}

#[tokio::test]
async fn messages_with_a_stale_join_ref_are_dropped_and_null_join_ref_is_accepted() {
    let server = start_default().await;
    let mut c = Client::user(&server, "a").await;
    let jr = c.join("room:s", json!({})).await;
    c.sync().await;
    c.send_json(json!(["stale", "50", "room:s", "new_msg", {}]))
        .await;
    c.send_json(json!(["stale", "51", "room:s", "phx_leave", {}]))
        .await;
    assert_eq!(c.sync().await, Vec::<serde_json::Value>::new());
    c.send_json(json!([null, "52", "room:s", "new_msg", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!([jr, "52", "room:s", "phx_reply", {"status": "ok", "response": {}}])
    );
}

#[tokio::test]
async fn joins_beyond_the_channel_limit_are_refused() {
    let server = start(Config {
        max_channels: 2,
        ..Config::default()
    })
    .await;
    let mut c = Client::user(&server, "a").await;
    c.join("room:1", json!({})).await;
    c.join("room:2", json!({})).await;
    c.sync().await;
    c.send_json(json!(["8", "8", "room:3", "phx_join", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!(["8", "8", "room:3", "phx_reply", {"status": "error", "response": {"reason": "too many channels joined"}}])
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let server = start(Config {
        idle_timeout: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(&server, "vsn=2.0.0").await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 1001);
    assert_eq!(reason, "idle timeout");
}

#[tokio::test]
async fn auth_token_subprotocol_is_accepted_and_phoenix_is_echoed() {
    let server = start_default().await;
    let mut req = format!("ws://{}/socket/websocket?vsn=2.0.0", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "phoenix, base64url.bearer.phx.c2VjcmV0LXRva2Vu"
            .parse()
            .unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("phoenix")
    );
    ws.send(Message::text(r#"[null,"1","phoenix","heartbeat",{}]"#))
        .await
        .unwrap();
}

#[tokio::test]
async fn binary_pushes_are_relayed_as_binary_broadcasts() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    let ja = a.join("room:bin", json!({})).await;
    b.join("room:bin", json!({})).await;
    a.sync().await;
    b.sync().await;
    // kind 0, join_ref, ref "2", topic, event "blob", payload [1,2,3]
    let mut frame = vec![0u8, ja.len() as u8, 1, 8, 4];
    frame.extend_from_slice(ja.as_bytes());
    frame.extend_from_slice(b"2room:binblob");
    frame.extend_from_slice(&[1, 2, 3]);
    a.ws.send(Message::binary(frame)).await.unwrap();
    assert_eq!(
        a.recv_json().await,
        json!([ja, "2", "room:bin", "phx_reply", {"status": "ok", "response": {}}])
    );
    match b.recv().await {
        Message::Binary(bytes) => {
            let mut expected = vec![2u8, 8, 4];
            expected.extend_from_slice(b"room:binblob");
            expected.extend_from_slice(&[1, 2, 3]);
            assert_eq!(bytes.to_vec(), expected);
        }
        other => panic!("expected a binary broadcast, got {other:?}"),
    }
}

#[tokio::test]
async fn a_malformed_frame_closes_only_that_connection_with_a_reason() {
    let server = start_default().await;
    let mut bad = Client::connect(&server, "vsn=2.0.0").await;
    let mut good = Client::connect(&server, "vsn=2.0.0").await;
    bad.send_text("not json").await;
    let (code, reason) = bad.expect_close().await;
    assert_eq!(code, 1007);
    assert!(reason.starts_with("invalid JSON"), "{reason}");
    assert_eq!(good.sync().await, Vec::<serde_json::Value>::new());
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let server = start(Config {
        max_frame_size: 1000,
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(&server, "vsn=2.0.0").await;
    let big = "x".repeat(2000);
    c.send_json(json!([null, "1", "room:a", "e", {"big": big}]))
        .await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 1009);
    assert!(reason.contains("frame too large"), "{reason}");
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::connect(&server, "vsn=1.0.0").await;
    a.join("room:z", json!({})).await;
    a.sync().await;
    server.shutdown.shutdown();
    assert_eq!(a.expect_close().await.0, 1001);
    assert_eq!(b.expect_close().await.0, 1001);
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("server stops after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn healthz_reports_status_and_node_name() {
    let server = start(Config {
        node_name: "node-a".into(),
        ..Config::default()
    })
    .await;
    let (status, headers, body) = http(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["node"], "node-a");
}

#[tokio::test]
async fn the_demo_page_is_served_at_root() {
    let dir = std::env::temp_dir().join(format!("rollcall-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>demo</h1>").unwrap();
    let server = start(Config {
        static_dir: Some(dir),
        ..Config::default()
    })
    .await;
    let (status, _, body) = http(server.addr, "GET", "/", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, "<h1>demo</h1>");
}

#[tokio::test]
async fn a_frame_far_over_the_size_limit_also_closes_with_1009() {
    let server = start(Config {
        max_frame_size: 1000,
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(&server, "vsn=2.0.0").await;
    let mut other = Client::connect(&server, "vsn=2.0.0").await;
    let big = "x".repeat(300 * 1024);
    c.send_json(json!([null, "1", "room:a", "e", {"big": big}]))
        .await;
    let (code, _) = c.expect_close().await;
    assert_eq!(code, 1009);
    assert_eq!(other.sync().await, Vec::<serde_json::Value>::new());
}

#[tokio::test]
async fn a_non_get_request_to_the_websocket_path_gets_400() {
    let server = start_default().await;
    for method in ["POST", "PUT", "DELETE"] {
        let (status, _, body) =
            http(server.addr, method, "/socket/websocket?vsn=2.0.0", &[], b"").await;
        assert_eq!(status, 400, "{method}");
        assert_eq!(body, rollcall_server::transport::websocket::NOT_AN_UPGRADE);
    }
}

#[tokio::test]
async fn a_get_without_upgrade_headers_gets_400_with_a_reason() {
    let server = start_default().await;
    let (status, _, body) = http(server.addr, "GET", "/socket/websocket?vsn=2.0.0", &[], b"").await;
    assert_eq!(status, 400);
    assert_eq!(body, rollcall_server::transport::websocket::NOT_AN_UPGRADE);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_still_closed_when_idle() {
    let server = start(Config {
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .await;
    let mut watcher = Client::user(&server, "watcher").await;
    watcher.join("room:stuck", json!({})).await;
    watcher.sync().await;
    // A client with a small receive buffer, so that the server's writes to it block soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let url = format!(
        "ws://{}/socket/websocket?vsn=2.0.0&user_id=stuck",
        server.addr
    );
    let (mut stuck, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let join = json!(["1", "1", "room:stuck", "phx_join", {}]).to_string();
    stuck.send(Message::text(join)).await.unwrap();
    let joined = watcher
        .recv_until(|v| v[3] == "presence_diff" && v[4]["joins"].get("stuck").is_some())
        .await;
    assert_eq!(joined[2], "room:stuck");
    // It sends heartbeats and never reads their replies, until its own writes block: the
    // server has stopped reading, stuck writing a reply nobody takes.
    let heartbeat = Message::text(json!([null, "2", "phoenix", "heartbeat", {}]).to_string());
    let mut flood = tokio::spawn(async move {
        for _ in 0..1_000_000 {
            let sent =
                tokio::time::timeout(Duration::from_millis(500), stuck.send(heartbeat.clone()))
                    .await;
            if sent.is_err() {
                break;
            }
        }
        stuck
    });
    let stuck_left = |frames: Vec<serde_json::Value>| {
        frames
            .iter()
            .any(|f| f[3] == "presence_diff" && f[4]["leaves"].get("stuck").is_some())
    };
    // The watcher keeps its own connection alive meanwhile.
    let mut left = false;
    let stuck = crate::support::server::within("the stuck client's writes to block", async {
        loop {
            tokio::select! {
                stuck = &mut flood => break stuck.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    left |= stuck_left(watcher.sync().await);
                }
            }
        }
    })
    .await;
    // Now silent: the idle timeout (1 s) must still end it, and its member must leave.
    let left = tokio::time::timeout(Duration::from_secs(15), async {
        while !left {
            left = stuck_left(watcher.sync().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        left.is_ok(),
        "a client that stopped reading stays connected and listed past its idle timeout"
    );
    drop(stuck);
}

#[tokio::test]
async fn a_frame_far_larger_than_the_read_buffer_arrives_whole() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    let ra = a.join("room:big", json!({"track": false})).await;
    b.join("room:big", json!({"track": false})).await;
    // 600 KB: under the 1 MiB frame limit, some 75 times the connection's read buffer.
    let body = "x".repeat(600_000);
    let r = a.push(&ra, "room:big", "blob", json!({"body": body})).await;
    let reply = a.recv_until(|f| f[1] == json!(r)).await;
    assert_eq!(reply[4]["status"], "ok");
    let got = b.recv_until(|f| f[3] == "blob").await;
    assert_eq!(got[4]["body"].as_str().map(str::len), Some(600_000));
}
