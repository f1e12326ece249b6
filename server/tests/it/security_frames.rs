//! Hostile input over real sockets on 127.0.0.1: every kind of malformed frame gets an error
//! reply or a close with a reason, and the other connections on the node do not notice — the
//! bystander keeps its presence and keeps receiving diffs.

use crate::support::server::{keys, longpoll_open, longpoll_post, start, Client, TestServer};

const NDJSON: &str = "application/x-ndjson";
use rollcall_server::Config;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const MAX_FRAME: usize = 4096;

/// What the attacker must get back.
enum Expect {
    /// The connection closes with this code and a reason containing this text.
    Close(u16, &'static str),
    /// An error reply (to ref "9") whose reason contains this text; the connection stays.
    Reply(&'static str),
}

/// A server with a bystander (`alice`) in `room:r`.
async fn room_with_bystander() -> (TestServer, Client) {
    let server = start(Config {
        max_frame_size: MAX_FRAME,
        max_meta_size: 1024,
        ..Config::default()
    })
    .await;
    let mut alice = Client::user(&server, "alice").await;
    alice
        .join("room:r", json!({"meta": {"status": "here"}}))
        .await;
    alice.sync().await;
    (server, alice)
}

/// The bystander is still listed and still receives diffs: a newcomer's join reaches it.
async fn bystander_unaffected(server: &TestServer, alice: &mut Client, newcomer: &str) {
    let mut c = Client::user(server, newcomer).await;
    c.join("room:r", json!({})).await;
    let diff = alice
        .recv_until(|v| v[3] == "presence_diff" && v[4]["joins"].get(newcomer).is_some())
        .await;
    assert_eq!(keys(&diff[4]["joins"]), vec![newcomer.to_string()]);
    let list = server.tracker.list("room:r").await;
    assert_eq!(list["alice"]["metas"][0]["status"], "here");
    alice.sync().await; // and it still gets heartbeat replies
}

async fn hostile(query: &str, frame: Message, expect: Expect) {
    let (server, mut alice) = room_with_bystander().await;
    let mut mallory = Client::connect(&server, query).await;
    if query.contains("vsn=1.") {
        mallory
            .send_json(json!({"topic": "room:r", "event": "phx_join", "payload": {}, "ref": "1"}))
            .await;
        let reply = mallory.recv_until(|v| v["ref"] == "1").await;
        assert_eq!(reply["payload"]["status"], "ok");
        // Its join must reach the tracker before the bad frame.
        alice
            .recv_until(|v| v[3] == "presence_diff" && v[4]["joins"].get("mallory").is_some())
            .await;
    } else {
        mallory.join("room:r", json!({})).await;
        mallory.sync().await;
    }
    mallory.ws.send_frame(frame).await;
    match expect {
        Expect::Close(code, reason) => {
            let (got_code, got_reason) = mallory.expect_close().await;
            assert_eq!(got_code, code, "{got_reason}");
            assert!(
                got_reason.contains(reason),
                "{got_reason:?} lacks {reason:?}"
            );
            // Its presence leaves, as for any closed connection.
            let left = alice
                .recv_until(|v| v[3] == "presence_diff" && v[4]["leaves"] != json!({}))
                .await;
            assert_eq!(keys(&left[4]["leaves"]), vec!["mallory"]);
        }
        Expect::Reply(reason) => {
            let reply = mallory.recv_until(|v| v[1] == "9").await;
            assert_eq!(reply[4]["status"], "error", "{reply}");
            let got = reply[4]["response"]["reason"].as_str().unwrap_or_default();
            assert!(got.contains(reason), "{got:?} lacks {reason:?}");
            // The attacker's connection still works.
            let r = mallory.push("1", "room:r", "still_here", json!({})).await;
            let ok = mallory.recv_until(|v| v[1] == json!(r)).await;
            assert_eq!(ok[4]["status"], "ok");
        }
    }
    bystander_unaffected(&server, &mut alice, "carol").await;
}

const V2: &str = "vsn=2.0.0&user_id=mallory";

trait SendFrame {
    async fn send_frame(&mut self, frame: Message);
}

impl SendFrame
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn send_frame(&mut self, frame: Message) {
        use futures_util::SinkExt;
        self.send(frame).await.expect("send");
    }
}

fn text(t: &str) -> Message {
    Message::text(t.to_string())
}

#[tokio::test]
async fn invalid_json_closes_with_1007_and_the_parse_error() {
    hostile(
        V2,
        text(r#"["1","2","room:r""#),
        Expect::Close(1007, "invalid JSON"),
    )
    .await;
}

#[tokio::test]
async fn a_json_object_on_a_v2_socket_closes_with_1007_malformed_message() {
    hostile(
        V2,
        text(r#"{"topic":"room:r","event":"x"}"#),
        Expect::Close(1007, "malformed message"),
    )
    .await;
}

#[tokio::test]
async fn a_short_array_closes_with_1007_naming_the_expected_shape() {
    hostile(
        V2,
        text(r#"[null,"1","room:r"]"#),
        Expect::Close(1007, "expected [join_ref, ref, topic, event, payload]"),
    )
    .await;
}

#[tokio::test]
async fn fields_of_the_wrong_type_close_with_1007() {
    hostile(
        V2,
        text(r#"[null,"1",42,"ev",{}]"#),
        Expect::Close(1007, "topic must be"),
    )
    .await;
}

#[tokio::test]
async fn a_v1_message_missing_its_topic_closes_with_1007() {
    hostile(
        "vsn=1.0.0&user_id=mallory",
        text(r#"{"event":"x","payload":{},"ref":"1"}"#),
        Expect::Close(1007, "missing"),
    )
    .await;
}

#[tokio::test]
async fn an_unknown_binary_kind_closes_with_1007() {
    hostile(
        V2,
        Message::binary(vec![9u8, 0, 0, 0, 0]),
        Expect::Close(1007, "unknown binary frame kind 9"),
    )
    .await;
}

#[tokio::test]
async fn a_truncated_binary_frame_closes_with_1007() {
    // A push announcing a 5-byte join_ref, 3-byte ref, 6-byte topic and 4-byte event, then 2 bytes.
    hostile(
        V2,
        Message::binary(vec![0u8, 5, 3, 6, 4, b'a', b'b']),
        Expect::Close(1007, "truncated binary frame"),
    )
    .await;
}

#[tokio::test]
async fn an_empty_binary_frame_closes_with_1007() {
    hostile(
        V2,
        Message::binary(Vec::<u8>::new()),
        Expect::Close(1007, "empty binary frame"),
    )
    .await;
}

#[tokio::test]
async fn a_binary_frame_on_a_v1_socket_closes_with_1007() {
    hostile(
        "vsn=1.0.0&user_id=mallory",
        Message::binary(vec![
            0u8, 1, 1, 6, 2, b'1', b'2', b'r', b'o', b'o', b'm', b':', b'r', b'e', b'v',
        ]),
        Expect::Close(1007, "binary frames need protocol vsn 2.0.0"),
    )
    .await;
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009() {
    let big = format!(
        r#"[null,"1","room:r","ev",{{"x":"{}"}}]"#,
        "x".repeat(MAX_FRAME)
    );
    hostile(V2, text(&big), Expect::Close(1009, "frame too large")).await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let raw = Frame::message(vec![b'[', 0xff, 0xfe, b']'], OpCode::Data(Data::Text), true);
    hostile(
        V2,
        Message::Frame(raw),
        Expect::Close(1007, "not valid UTF-8"),
    )
    .await;
}

#[tokio::test]
async fn a_join_payload_that_is_not_an_object_gets_an_error_reply() {
    hostile(
        V2,
        text(r#"["9","9","room:x","phx_join","hello"]"#),
        Expect::Reply("join payload must be an object"),
    )
    .await;
}

#[tokio::test]
async fn a_meta_that_is_not_an_object_gets_an_error_reply() {
    hostile(
        V2,
        text(r#"["1","9","room:r","track",[1,2]]"#),
        Expect::Reply("meta must be an object"),
    )
    .await;
}

#[tokio::test]
async fn an_oversize_meta_gets_an_error_reply() {
    let meta = json!(["1", "9", "room:r", "track", {"blob": "y".repeat(3000)}]);
    hostile(V2, text(&meta.to_string()), Expect::Reply("meta too large")).await;
}

#[tokio::test]
async fn a_reserved_or_invalid_event_name_gets_an_error_reply() {
    hostile(
        V2,
        text(r#"["1","9","room:r","presence_diff",{}]"#),
        Expect::Reply("reserved event name"),
    )
    .await;
    hostile(
        V2,
        text(r#"["1","9","room:r","bad name!",{}]"#),
        Expect::Reply("invalid event name"),
    )
    .await;
}

#[tokio::test]
async fn a_binary_join_payload_gets_an_error_reply() {
    // kind 0 push: join_ref "9", ref "9", topic "room:b", event "phx_join", payload bytes.
    let mut frame = vec![0u8, 1, 1, 6, 8];
    frame.extend_from_slice(b"99room:bphx_join\x01\x02");
    hostile(
        V2,
        Message::binary(frame),
        Expect::Reply("needs a JSON payload"),
    )
    .await;
}

#[tokio::test]
async fn a_burst_of_garbage_from_many_connections_leaves_the_bystander_listed() {
    let (server, mut alice) = room_with_bystander().await;
    let garbage: Vec<Message> = vec![
        text("not json"),
        text("[]"),
        text("{}"),
        text("null"),
        text(r#"[null,null,null,null,null]"#),
        Message::binary(vec![255u8]),
        Message::binary(vec![0u8, 255, 255, 255, 255]),
    ];
    let mut attackers = Vec::new();
    for (i, frame) in garbage.into_iter().enumerate() {
        let mut m = Client::user(&server, &format!("m{i}")).await;
        m.ws.send_frame(frame).await;
        attackers.push(m);
    }
    for m in &mut attackers {
        let (code, reason) = m.expect_close().await;
        assert_eq!(code, 1007, "{reason}");
        assert!(!reason.is_empty());
    }
    bystander_unaffected(&server, &mut alice, "dave").await;
    let list: Value = server.tracker.list("room:r").await;
    assert_eq!(keys(&list), vec!["alice", "dave"]);
}

#[tokio::test]
async fn garbage_in_a_longpoll_body_ends_only_that_session() {
    let (server, mut alice) = room_with_bystander().await;
    let session = longpoll_open(server.addr, "vsn=2.0.0&user_id=lp").await;
    let post = |payload: &'static [u8]| longpoll_post(server.addr, &session, NDJSON, payload);
    post(br#"["1","1","room:r","phx_join",{}]"#).await;
    alice
        .recv_until(|v| v[3] == "presence_diff" && v[4]["joins"].get("lp").is_some())
        .await;
    // A line that is neither JSON nor base64, then valid-looking ones after it.
    post(b"%%% not base64 %%%\n[\"1\",\"2\",\"room:r\",\"ev\",{}]").await;
    let left = alice
        .recv_until(|v| v[3] == "presence_diff" && v[4]["leaves"] != json!({}))
        .await;
    assert_eq!(keys(&left[4]["leaves"]), vec!["lp"]);
    bystander_unaffected(&server, &mut alice, "erin").await;
}

#[tokio::test]
async fn a_join_of_a_topic_too_long_or_not_printable_is_refused_with_the_reason() {
    let server = crate::support::server::start_default().await;
    let mut c = Client::user(&server, "namer").await;
    for (topic, reason) in [
        (format!("room:{}", "x".repeat(251)), "topic too long"),
        ("room:a\nb".to_string(), "invalid topic"),
        ("room:\u{202E}lobby".to_string(), "invalid topic"),
        ("room:a\0".to_string(), "invalid topic"),
    ] {
        let r = c.next_ref();
        c.send_json(json!([r, r, topic, "phx_join", {}])).await;
        let reply = c.recv_until(|v| v[1] == json!(r)).await;
        assert_eq!(
            reply[4],
            json!({"status": "error", "response": {"reason": reason}})
        );
    }
    // The longest allowed topic joins, and the connection works on.
    c.join(&format!("room:{}", "x".repeat(250)), json!({}))
        .await;
    c.sync().await;
    let (status, _, body) = crate::support::server::http(
        server.addr,
        "GET",
        &format!("/api/presence/room:{}", "x".repeat(300)),
        &[],
        b"",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"error":"topic too long"}"#)
    );
}

#[tokio::test]
async fn a_presence_key_too_long_or_not_printable_is_refused_at_connect() {
    let server = crate::support::server::start_default().await;
    for (user, reason) in [
        ("k".repeat(256), "presence key too long"),
        ("al%E2%80%AEice".to_string(), "invalid presence key"),
        ("a%0Ab".to_string(), "invalid presence key"),
    ] {
        let url = format!(
            "ws://{}/socket/websocket?vsn=2.0.0&user_id={user}",
            server.addr
        );
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403);
                let body = resp.body().clone().unwrap_or_default();
                assert_eq!(String::from_utf8_lossy(&body), reason);
            }
            other => panic!("expected 403 {reason}, got {other:?}"),
        }
    }
}
