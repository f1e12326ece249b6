//! The presence HTTP API (`GET /api/presence/{topic}` and `/count`) over real sockets on
//! 127.0.0.1: what it lists, who may ask, and (across two mesh nodes) that it is cluster-wide.

use std::time::Duration;

use crate::support::server::{http, keys, start, start_default, Client, TestServer};
use rollcall_server::config::Security;
use rollcall_server::security::auth::{mint, unix_now, Claims, Verifier};
use rollcall_server::Config;
use serde_json::{json, Value};

const SECRET: &str = "api-secret";

/// `GET path` with optional headers; returns the status, the `www-authenticate` header and the
/// body as JSON.
async fn get(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let (status, head, body) = http(server.addr, "GET", path, headers, b"").await;
    let www = head
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone());
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
    (status, www, json)
}

fn metas(presences: &Value, key: &str) -> Vec<Value> {
    presences[key]["metas"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no metas for {key} in {presences}"))
}

#[tokio::test]
async fn lists_both_members_with_their_metas_then_one_after_a_leave() {
    let _watchdog = crate::support::watchdog::start();
    let server = start_default().await;
    let mut a = Client::user(&server, "alice").await;
    let mut b = Client::user(&server, "bob").await;
    a.join("room:lobby", json!({"meta": {"status": "here"}}))
        .await;
    let join_ref = b
        .join("room:lobby", json!({"meta": {"status": "away"}}))
        .await;
    let state = b.sync().await;
    let (status, _, body) = get(&server, "/api/presence/room:lobby", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["topic"], "room:lobby");
    assert_eq!(body["count"], 2);
    let mut listed = keys(&body["presences"]);
    listed.sort();
    assert_eq!(listed, ["alice", "bob"]);
    let alice = metas(&body["presences"], "alice");
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0]["status"], "here");
    assert!(alice[0]["phx_ref"].is_string());
    assert!(alice[0]["online_at"].is_u64());
    assert_eq!(metas(&body["presences"], "bob")[0]["status"], "away");
    // The same shape and content as the presence_state a client gets (bob's showed alice).
    let pushed = state
        .iter()
        .find(|f| f[3] == "presence_state")
        .expect("a presence_state push");
    assert_eq!(pushed[4]["alice"], body["presences"]["alice"]);

    b.push(&join_ref, "room:lobby", "phx_leave", json!({}))
        .await;
    b.sync().await;
    let (status, _, body) = get(&server, "/api/presence/room:lobby", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body["presences"]), ["alice"]);
    assert_eq!(body["count"], 1);
}

#[tokio::test]
async fn count_answers_the_number_of_keys_not_of_metas() {
    let _watchdog = crate::support::watchdog::start();
    let server = start_default().await;
    let mut a1 = Client::user(&server, "alice").await;
    let mut a2 = Client::user(&server, "alice").await;
    let mut b = Client::user(&server, "bob").await;
    for c in [&mut a1, &mut a2, &mut b] {
        c.join("room:lobby", json!({})).await;
        c.sync().await;
    }
    let (status, _, body) = get(&server, "/api/presence/room:lobby/count", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"topic": "room:lobby", "count": 2}));
    let (_, _, full) = get(&server, "/api/presence/room:lobby", &[]).await;
    assert_eq!(metas(&full["presences"], "alice").len(), 2);
}

#[tokio::test]
async fn an_empty_room_lists_no_one() {
    let _watchdog = crate::support::watchdog::start();
    let server = start_default().await;
    let (status, _, body) = get(&server, "/api/presence/room:nobody", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"topic": "room:nobody", "presences": {}, "count": 0})
    );
}

#[tokio::test]
async fn a_topic_outside_the_room_patterns_is_404_with_a_json_error() {
    let _watchdog = crate::support::watchdog::start();
    let server = start_default().await;
    for path in ["/api/presence/chat:x", "/api/presence/chat:x/count"] {
        let (status, _, body) = get(&server, path, &[]).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"], "not a room topic: chat:x");
    }
}

#[tokio::test]
async fn a_percent_encoded_topic_is_decoded() {
    let _watchdog = crate::support::watchdog::start();
    let server = start(Config {
        rooms: rollcall_server::config::parse_rooms("team/*"),
        ..Config::default()
    })
    .await;
    let mut a = Client::user(&server, "alice").await;
    a.join("team/a b", json!({})).await;
    a.sync().await;
    let (status, _, body) = get(&server, "/api/presence/team%2Fa%20b", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["topic"], "team/a b");
    assert_eq!(keys(&body["presences"]), ["alice"]);
}

#[tokio::test]
async fn a_topic_that_is_not_utf8_is_400_with_a_json_error() {
    let _watchdog = crate::support::watchdog::start();
    let server = start_default().await;
    let (status, _, body) = get(&server, "/api/presence/room%3A%FF", &[]).await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string(), "{body}");
}

// ---- with a token secret ----

async fn secured() -> TestServer {
    start(Config {
        security: Security {
            verifier: Verifier::new(&[SECRET]),
            ..Security::default()
        },
        ..Config::default()
    })
    .await
}

fn token(sub: &str, rooms: Option<&[&str]>, exp: u64) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp: Some(exp),
        rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
        ..Claims::default()
    };
    mint(SECRET, &claims).expect("mint")
}

#[tokio::test]
async fn with_a_secret_no_token_is_401_with_a_bearer_challenge() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    for headers in [
        &[][..],
        &[("authorization", "Basic dXNlcjpwYXNz")][..],
        &[("authorization", "Bearer")][..],
    ] {
        let (status, www, body) = get(&server, "/api/presence/room:lobby", headers).await;
        assert_eq!(status, 401, "{headers:?}");
        assert!(www.is_some_and(|w| w.starts_with("Bearer")), "{headers:?}");
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn with_a_secret_a_bad_or_expired_token_is_401_with_the_reason() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let forged = mint(
        "another-secret",
        &Claims {
            sub: "backend".into(),
            ..Claims::default()
        },
    )
    .unwrap();
    let expired = token("backend", None, unix_now() - 3600);
    for (tok, reason) in [
        (forged.as_str(), "invalid token signature"),
        (expired.as_str(), "token expired"),
        ("not-a-jwt", "malformed token"),
    ] {
        let auth = format!("Bearer {tok}");
        let (status, _, body) = get(
            &server,
            "/api/presence/room:lobby",
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(status, 401, "{reason}");
        assert!(
            body["error"].as_str().unwrap().starts_with(reason),
            "{body}"
        );
    }
}

#[tokio::test]
async fn with_a_secret_a_token_whose_rooms_exclude_the_topic_is_403() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let auth = format!(
        "Bearer {}",
        token("backend", Some(&["room:team-*"]), unix_now() + 60)
    );
    let (status, _, body) = get(
        &server,
        "/api/presence/room:lobby",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "token may not join room:lobby");
    let (status, _, _) = get(
        &server,
        "/api/presence/room:team-red/count",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn with_a_secret_a_valid_token_reads_the_room() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let member = token("alice", None, unix_now() + 60);
    let mut a = Client::connect(&server, &format!("vsn=2.0.0&token={member}")).await;
    a.join("room:lobby", json!({"meta": {"status": "here"}}))
        .await;
    a.sync().await;
    let auth = format!(
        "bearer {}",
        token("backend", Some(&["room:*"]), unix_now() + 60)
    );
    let (status, _, body) = get(
        &server,
        "/api/presence/room:lobby",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body["presences"]), ["alice"]);
    assert_eq!(metas(&body["presences"], "alice")[0]["status"], "here");
}

#[tokio::test]
async fn a_disallowed_origin_is_refused() {
    let _watchdog = crate::support::watchdog::start();
    let server = start(Config {
        security: Security {
            allowed_origins: rollcall_server::config::parse_origins("https://app.example.com"),
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let (status, _, _) = get(
        &server,
        "/api/presence/room:lobby",
        &[("origin", "https://evil.example.net")],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = get(
        &server,
        "/api/presence/room:lobby",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(status, 200);
}

// ---- across nodes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_lists_a_member_connected_elsewhere() {
    let _watchdog = crate::support::watchdog::start();
    use crate::support::cluster::{serial, Node, User, DEADLINE, FAST_TIMING};
    let _serial = serial().await;
    let a = Node::mesh("api-a", &[], &FAST_TIMING).await;
    let b = Node::mesh("api-b", &[&a], &FAST_TIMING).await;
    let _ua = User::join(&a, "ua", "room:lobby", json!({"status": "here"})).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let body = loop {
        let (status, text) =
            crate::support::cluster::http(&b.addr, "GET", "/api/presence/room:lobby").await;
        assert_eq!(status, 200, "{text}");
        let body: Value = serde_json::from_str(&text).expect("JSON");
        if body["count"] == 1 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never listed ua: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let meta = &body["presences"]["ua"]["metas"][0];
    assert_eq!(meta["status"], "here");
    assert_eq!(meta["node"], "api-a");
    // b's metrics see the member as stored but not local, and a as an up replica.
    let (_, metrics) = crate::support::cluster::http(&b.addr, "GET", "/metrics").await;
    assert!(
        metrics.contains("\nrollcall_presences_stored 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nrollcall_presences_local 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nrollcall_tracker_replicas{status=\"up\"} 1\n"),
        "{metrics}"
    );
}
