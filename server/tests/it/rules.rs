//! Rules the README and docs/security.md state, each pinned by a test that fails when the rule
//! is broken: an empty `rooms` list, "in a row", the fields only the server writes, and the
//! origin check on long-poll POSTs.

use rollcall_server::config::{parse_origins, Security};
use rollcall_server::security::auth::{mint, unix_now, Claims, Verifier};
use rollcall_server::security::limits::RateLimit;
use rollcall_server::Config;
use serde_json::{json, Value};

use crate::support::server::{http, keys, longpoll_open, longpoll_post, start, Client};

const SECRET: &str = "rules-secret";

/// The reply to a join of `topic` (its status and response).
async fn join_reply(c: &mut Client, topic: &str, payload: Value) -> Value {
    let r = c.next_ref();
    c.send_json(json!([r, r, topic, "phx_join", payload])).await;
    c.recv_until(|v| v[1] == json!(r) && v[3] == "phx_reply")
        .await[4]
        .clone()
}

#[tokio::test]
async fn a_token_with_an_empty_rooms_list_may_join_no_room() {
    let server = start(Config {
        security: Security {
            verifier: Verifier::new(&[SECRET]),
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let token = mint(
        SECRET,
        &Claims {
            sub: "nobody".into(),
            exp: Some(unix_now() + 60),
            rooms: Some(Vec::new()),
            ..Default::default()
        },
    )
    .expect("mint");
    let mut c = Client::connect(&server, &format!("vsn=2.0.0&token={token}")).await;
    for topic in ["room:lobby", "room:", "room:*"] {
        assert_eq!(
            join_reply(&mut c, topic, json!({})).await,
            json!({"status": "error", "response": {"reason": format!("token may not join {topic}")}}),
            "{topic}"
        );
    }
}

#[tokio::test]
async fn only_rate_limited_messages_in_a_row_close_the_connection() {
    // One event token that never refills; joins within the channel limit have their own
    // allowance, so each join is an accepted message between the refused ones.
    let server = start(Config {
        security: Security {
            event_rate: RateLimit {
                per_second: 0.000_001,
                burst: 1,
            },
            max_limited_in_a_row: 3,
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let mut c = Client::user(&server, "bursty").await;
    let jr = c.join("room:a", json!({"track": false})).await;
    let r = c.push(&jr, "room:a", "e", json!({})).await;
    assert_eq!(c.recv_until(|v| v[1] == json!(r)).await[4]["status"], "ok");
    for n in 0..4 {
        for _ in 0..2 {
            let r = c.push(&jr, "room:a", "e", json!({})).await;
            assert_eq!(
                c.recv_until(|v| v[1] == json!(r)).await[4],
                json!({"status": "error", "response": {"reason": "rate limited"}})
            );
        }
        // Accepted: the count starts again, 8 refusals in all never make 3 in a row.
        c.join(&format!("room:b{n}"), json!({"track": false})).await;
    }
    c.sync().await;
    for _ in 0..3 {
        c.push(&jr, "room:a", "e", json!({})).await;
    }
    assert_eq!(
        c.expect_close().await,
        (1008, "rate limited: too many messages".into())
    );
}

#[tokio::test]
async fn the_server_writes_node_and_online_at_whatever_the_client_sends() {
    let server = start(Config::default()).await;
    let mut c = Client::user(&server, "liar").await;
    let forged = json!({"node": "elsewhere", "online_at": 1, "status": "here"});
    let jr = c.join("room:m", json!({"meta": forged})).await;
    // The state is sent before the join is tracked; the member arrives in a diff.
    let joined = c
        .recv_until(|v| v[3] == "presence_diff" && v[4]["joins"] != json!({}))
        .await;
    let meta = &joined[4]["joins"]["liar"]["metas"][0];
    let node = server.tracker.node().to_string();
    let online_at = meta["online_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("{joined}"));
    assert_eq!(meta["node"], json!(node));
    assert!(online_at > 1_000_000_000, "{online_at}");
    assert_eq!(meta["status"], "here");
    // A meta update cannot forge them either.
    let r = c.push(&jr, "room:m", "track", forged).await;
    assert_eq!(c.recv_until(|v| v[1] == json!(r)).await[4]["status"], "ok");
    let diff = c
        .recv_until(|v| v[3] == "presence_diff" && v[4]["joins"] != json!({}))
        .await;
    let meta = &diff[4]["joins"]["liar"]["metas"][0];
    assert_eq!(meta["node"], json!(node));
    assert_eq!(meta["online_at"], json!(online_at));
}

#[tokio::test]
async fn a_long_poll_post_from_a_disallowed_origin_is_refused_and_delivers_nothing() {
    let server = start(Config {
        security: Security {
            allowed_origins: parse_origins("https://app.example.com"),
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let mut watcher = Client::user(&server, "watcher").await;
    watcher.join("room:o", json!({"track": false})).await;
    // A session opened by a client without an Origin (not a browser): allowed.
    let token = longpoll_open(server.addr, "vsn=2.0.0&user_id=lp").await;
    let join = json!(["1", "1", "room:o", "phx_join", {}]).to_string();
    let (_, _, body) = http(
        server.addr,
        "POST",
        "/socket/longpoll?vsn=2.0.0",
        &[
            ("content-type", "application/json"),
            ("x-phoenix-longpoll-token", &token),
            ("origin", "https://evil.example.com"),
        ],
        join.as_bytes(),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"status": 403})
    );
    let frames = watcher.sync().await;
    assert!(
        !frames.iter().any(|f| f[3] == "presence_diff"),
        "the refused POST joined: {frames:?}"
    );
    // The same POST without the foreign origin is delivered.
    let resp = longpoll_post(server.addr, &token, "application/json", &join).await;
    assert_eq!(resp, json!({"status": 200}));
    let diff = watcher.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&diff[4]["joins"]), vec!["lp"]);
}
