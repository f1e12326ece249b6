//! The join hook against a real `rollcall` process and a real HTTP receiver: the backend
//! allows (its meta merged as trusted), refuses (its reason reaches the client), or hangs
//! (the joiner alone waits, at most the timeout; then `--join-hook-on-error` decides). Every
//! request is signed.

use std::time::Duration;

use crate::support::cluster::{Node, User, DEADLINE};
use crate::support::receiver::{Answer, Receiver, Request};
use rollcall_server::security::auth::unix_now;
use rollcall_server::security::signature::{verify, SIGNATURE_HEADER};
use serde_json::{json, Value};

const SECRET: &str = "hook-secret";

async fn node(name: &str, receiver: &Receiver, extra: &[&str]) -> Node {
    let mut args: Vec<String> = [
        "--join-hook-url",
        &receiver.url,
        "--webhook-secret",
        SECRET,
        "--join-hook-timeout-ms",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Node::start(name, &args).await
}

/// The hook the tests run: `room:ok*` allowed with a role, `room:banned` refused, `room:slow`
/// hangs, anything else an HTTP 500.
fn backend(request: &Request) -> Answer {
    let topic = request.json()["topic"].as_str().unwrap_or("").to_string();
    if topic.starts_with("room:ok") {
        Answer::Status(200, r#"{"allow":true,"meta":{"role":"admin"}}"#.into())
    } else if topic == "room:banned" {
        Answer::Status(
            200,
            r#"{"allow":false,"reason":"banned from this room"}"#.into(),
        )
    } else if topic == "room:slow" {
        Answer::Hang
    } else {
        Answer::Status(500, "{}".into())
    }
}

/// The status and response of `user`'s join reply.
async fn join_reply(user: &User) -> (String, Value) {
    let view = user
        .wait_for("the join reply", |v| v.replies.iter().any(|r| r[1] == "1"))
        .await;
    let reply = view.replies.iter().find(|r| r[1] == "1").cloned().unwrap();
    (
        reply[4]["status"].as_str().unwrap_or("").to_string(),
        reply[4]["response"].clone(),
    )
}

#[tokio::test]
async fn an_allowed_join_carries_the_hooks_meta_as_trusted_and_the_request_is_signed() {
    let receiver = Receiver::start(backend).await;
    let node = node("hook-allow", &receiver, &[]).await;
    let user = User::open(&node, "alice", "room:ok").await;
    user.send_join(json!({"meta": {"role": "guest", "mood": "fine"}, "extra": 1}));
    let (status, _) = join_reply(&user).await;
    assert_eq!(status, "ok");
    let view = user.wait_keys(&["alice"]).await;
    let meta = &view.presence["alice"][0];
    assert_eq!(
        meta["role"], "admin",
        "the hook's meta wins over the client's"
    );
    assert_eq!(meta["mood"], "fine");

    let request = receiver.requests().pop().unwrap();
    let body = request.json();
    assert_eq!(body["topic"], "room:ok");
    assert_eq!(body["key"], "alice");
    assert_eq!(
        body["params"],
        json!({"meta": {"role": "guest", "mood": "fine"}, "extra": 1})
    );
    assert_eq!(body["claims"], json!(null), "open mode: no token");
    assert_eq!(body["node"], "hook-allow");
    assert_eq!(request.path, "/hook");
    let signature = request.header(SIGNATURE_HEADER).expect("signed");
    verify(SECRET.as_bytes(), signature, &request.body, unix_now(), 60).expect("valid");
    assert!(verify(b"other", signature, &request.body, unix_now(), 60).is_err());
}

#[tokio::test]
async fn a_refused_join_gets_the_hooks_reason_and_is_not_listed() {
    let receiver = Receiver::start(backend).await;
    let node = node("hook-refuse", &receiver, &[]).await;
    let user = User::open(&node, "mallory", "room:banned").await;
    user.send_join(json!({}));
    let (status, response) = join_reply(&user).await;
    assert_eq!(status, "error");
    assert_eq!(response, json!({"reason": "banned from this room"}));
    let watcher = User::observe(&node, "watcher", "room:banned").await;
    // The watcher's own join is refused too; the room stays empty.
    let (status, _) = join_reply(&watcher).await;
    assert_eq!(status, "error");
    let (code, body) =
        crate::support::cluster::http(&node.addr, "GET", "/api/presence/room:banned").await;
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["count"], 0);
    // Each join asks anew: once the backend changes its mind, the same room lets users in.
    receiver.answer(|_| Answer::Status(200, r#"{"allow":true}"#.into()));
    let later = User::open(&node, "mallory", "room:banned").await;
    later.send_join(json!({}));
    assert_eq!(join_reply(&later).await.0, "ok");
}

#[tokio::test]
async fn a_hanging_hook_costs_only_its_joiner_the_timeout_and_then_denies() {
    let receiver = Receiver::start(backend).await;
    let node = node("hook-hang", &receiver, &[]).await;
    let slow = User::open(&node, "slow", "room:slow").await;
    slow.send_join(json!({}));
    receiver
        .wait_for("the slow join's request", DEADLINE, |r| {
            r.iter().any(|r| r.json()["topic"] == "room:slow")
        })
        .await;
    // While that join waits, another client joins another room at once.
    let fast = User::open(&node, "fast", "room:ok-fast").await;
    fast.send_join(json!({}));
    let (status, _) = join_reply(&fast).await;
    assert_eq!(status, "ok");
    assert!(
        slow.view().replies.is_empty(),
        "the slow join is still waiting for its hook"
    );
    let (status, response) = join_reply(&slow).await;
    assert_eq!(status, "error");
    assert_eq!(response, json!({"reason": "join hook unavailable"}));
    // A hook answering 500 is a failure too.
    let broken = User::open(&node, "b", "room:other").await;
    broken.send_join(json!({}));
    assert_eq!(join_reply(&broken).await.0, "error");
    let (_, metrics) = crate::support::cluster::http(&node.addr, "GET", "/metrics").await;
    assert!(
        metrics.contains("rollcall_join_hook_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rollcall_joins_refused_total{reason=\"join_hook\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_on_error_allow_a_hanging_hook_lets_the_join_through_after_the_timeout() {
    let receiver = Receiver::start(backend).await;
    let node = node("hook-open", &receiver, &["--join-hook-on-error", "allow"]).await;
    let started = tokio::time::Instant::now();
    let user = User::open(&node, "u", "room:slow").await;
    user.send_join(json!({"meta": {"s": 1}}));
    let (status, _) = join_reply(&user).await;
    assert_eq!(status, "ok");
    // It waited for the hook: never before the timeout.
    assert!(started.elapsed() >= Duration::from_millis(500));
    let view = user.wait_keys(&["u"]).await;
    assert_eq!(view.presence["u"][0]["s"], 1);
}
