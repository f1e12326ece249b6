//! Tokens end to end over real sockets on 127.0.0.1: who may connect, which key they get,
//! which rooms they may join, and which meta fields the server vouches for.

use crate::support::server::{http, keys, start, Client, TestServer};
use base64::Engine;
use rollcall_server::config::Security;
use rollcall_server::security::auth::{mint, unix_now, Claims, Verifier, LEEWAY_SECS};
use rollcall_server::Config;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret";

async fn secured() -> TestServer {
    start(Config {
        security: Security {
            verifier: Verifier::new(&[SECRET, "previous-secret"]),
            ..Security::default()
        },
        ..Config::default()
    })
    .await
}

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: Some(unix_now() + 3600),
        ..Claims::default()
    }
}

fn token(claims: &Claims) -> String {
    mint(SECRET, claims).expect("mint")
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

/// Connects with `query`; returns the HTTP status and body of a refusal.
async fn refused(server: &TestServer, query: &str) -> (u16, String) {
    let url = format!("ws://{}/socket/websocket?{query}", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("connect with {query:?} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                String::from_utf8_lossy(&body).into(),
            )
        }
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

async fn with_token(server: &TestServer, token: &str, user_id: &str) -> Client {
    Client::connect(
        server,
        &format!("vsn=2.0.0&token={token}&user_id={user_id}"),
    )
    .await
}

#[tokio::test]
async fn without_a_token_a_secured_server_refuses_with_403_token_required() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    assert_eq!(
        refused(&server, "vsn=2.0.0&user_id=alice").await,
        (403, "token required".into())
    );
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused_with_403() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let t = mint("not-the-secret", &claims("alice")).expect("mint");
    assert_eq!(
        refused(&server, &format!("vsn=2.0.0&token={t}")).await,
        (403, "invalid token signature".into())
    );
}

#[tokio::test]
async fn a_forged_payload_under_a_real_signature_is_refused_with_403() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let real = token(&claims("mallory"));
    let mut parts: Vec<&str> = real.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged_body = b64.encode(json!({"sub": "admin", "exp": unix_now() + 3600}).to_string());
    parts[1] = &forged_body;
    let forged = parts.join(".");
    assert_eq!(
        refused(&server, &format!("vsn=2.0.0&token={forged}")).await,
        (403, "invalid token signature".into())
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_with_403() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let mut c = claims("alice");
    c.exp = Some(unix_now() - 3600);
    let t = token(&c);
    assert_eq!(
        refused(&server, &format!("vsn=2.0.0&token={t}")).await,
        (403, "token expired".into())
    );
}

#[tokio::test]
async fn garbage_in_place_of_a_token_is_refused_as_malformed() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let (status, reason) = refused(&server, "vsn=2.0.0&token=not.a.jwt").await;
    assert_eq!(status, 403);
    assert!(reason.starts_with("malformed token"), "{reason}");
}

#[tokio::test]
async fn a_token_signed_with_a_previous_secret_still_works_during_rotation() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let t = mint("previous-secret", &claims("alice")).expect("mint");
    let mut c = with_token(&server, &t, "").await;
    c.join("room:r", json!({})).await;
    assert_eq!(keys(&server.tracker.list("room:r").await), vec!["alice"]);
}

#[tokio::test]
async fn the_token_sub_is_the_key_whatever_user_id_says() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let mut c = with_token(&server, &token(&claims("alice")), "bob").await;
    c.join("room:r", json!({})).await;
    let diff = c.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&diff[4]["joins"]), vec!["alice"]);
    assert_eq!(keys(&server.tracker.list("room:r").await), vec!["alice"]);
}

#[tokio::test]
async fn the_phoenix_js_auth_token_subprotocol_carries_the_token() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.addr);
    let mut req = url.into_client_request().expect("request");
    let protocols = format!(
        "phoenix, base64url.bearer.phx.{}",
        b64.encode(token(&claims("carol")))
    );
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().expect("header"));
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("accepted");
    let mut c = Client::from_ws(ws);
    c.join("room:r", json!({})).await;
    assert_eq!(keys(&server.tracker.list("room:r").await), vec!["carol"]);
}

#[tokio::test]
async fn a_join_outside_the_token_rooms_gets_an_error_reply_with_the_reason() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let mut c = claims("alice");
    c.rooms = Some(vec!["room:team-*".into()]);
    let mut client = with_token(&server, &token(&c), "").await;
    client.join("room:team-blue", json!({})).await;
    client
        .send_json(json!(["9", "9", "room:secret", "phx_join", {}]))
        .await;
    let reply = client.recv_until(|v| v[1] == "9").await;
    assert_eq!(
        reply,
        json!(["9", "9", "room:secret", "phx_reply",
               {"status": "error", "response": {"reason": "token may not join room:secret"}}])
    );
    assert_eq!(
        keys(&server.tracker.list("room:secret").await),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn trusted_meta_from_the_token_cannot_be_overridden_by_join_or_track() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let mut c = claims("alice");
    c.meta = Some(object(json!({"name": "Alice", "avatar": "a.png"})));
    let mut client = with_token(&server, &token(&c), "").await;
    let jr = client
        .join(
            "room:r",
            json!({"meta": {"name": "Mallory", "status": "here"}}),
        )
        .await;
    client.sync().await;
    let list = server.tracker.list("room:r").await;
    let meta = &list["alice"]["metas"][0];
    assert_eq!(meta["name"], "Alice");
    assert_eq!(meta["avatar"], "a.png");
    assert_eq!(meta["status"], "here");

    let r = client
        .push(
            &jr,
            "room:r",
            "track",
            json!({"name": "Mallory", "avatar": "evil.png", "status": "away"}),
        )
        .await;
    client.recv_until(|v| v[1] == json!(r)).await;
    client.sync().await;
    let list = server.tracker.list("room:r").await;
    let metas = list["alice"]["metas"].as_array().expect("metas");
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0]["name"], "Alice");
    assert_eq!(metas[0]["avatar"], "a.png");
    assert_eq!(metas[0]["status"], "away");
}

#[tokio::test]
async fn longpoll_without_a_valid_token_gets_status_403() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    for headers in [vec![], vec![("x-phoenix-authtoken", "not.a.jwt")]] {
        let (status, _, body) = http(
            server.addr,
            "GET",
            "/socket/longpoll?vsn=2.0.0",
            &headers,
            b"",
        )
        .await;
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body, json!({"status": 403}));
    }
}

#[tokio::test]
async fn longpoll_with_the_authtoken_header_tracks_as_the_token_sub() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let t = token(&claims("dave"));
    let (_, _, body) = http(
        server.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0&user_id=eve",
        &[("x-phoenix-authtoken", &t)],
        b"",
    )
    .await;
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], 410, "{body}");
    let session = body["token"].as_str().expect("session token");
    let (_, _, posted) = http(
        server.addr,
        "POST",
        "/socket/longpoll?vsn=2.0.0",
        &[
            ("content-type", "application/x-ndjson"),
            ("x-phoenix-longpoll-token", session),
        ],
        br#"["1","1","room:lp","phx_join",{}]"#,
    )
    .await;
    assert!(posted.contains("200"), "{posted}");
    // The join is applied by the session's machine; wait for it with a deadline.
    let deadline = tokio::time::Instant::now() + crate::support::server::DEADLINE;
    loop {
        let list = server.tracker.list("room:lp").await;
        if !keys(&list).is_empty() {
            assert_eq!(keys(&list), vec!["dave"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "join never applied");
        tokio::task::yield_now().await;
    }
}

/// Claims accepted now that expire within 2–3 s (a connect on a loaded machine has 2 s to get
/// in): `exp` is in the past by a little less than the tolerated clock skew.
fn expiring_soon(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: Some(unix_now() + 3 - LEEWAY_SECS),
        ..Claims::default()
    }
}

#[tokio::test]
async fn socket_is_closed_when_its_token_expires() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let mut watcher = with_token(&server, &token(&claims("watcher")), "").await;
    watcher.join("room:exp", json!({})).await;
    watcher.sync().await;
    let mut short = with_token(&server, &token(&expiring_soon("short")), "").await;
    short.join("room:exp", json!({})).await;
    let joined = watcher.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&joined[4]["joins"]), vec!["short"]);

    assert_eq!(short.expect_close().await, (1008, "token expired".into()));
    let left = watcher.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&left[4]["leaves"]), vec!["short"]);
    assert_eq!(keys(&left[4]["joins"]), Vec::<String>::new());
    assert_eq!(
        keys(&server.tracker.list("room:exp").await),
        vec!["watcher"]
    );
}

#[tokio::test]
async fn a_socket_whose_token_has_no_exp_is_not_closed_for_expiry() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let mut c = claims("forever");
    c.exp = None;
    let mut client = with_token(&server, &token(&c), "").await;
    client.join("room:r", json!({})).await;
    // Outlives a token that expires now: the sync answers after that one was closed.
    let mut short = with_token(&server, &token(&expiring_soon("short")), "").await;
    assert_eq!(short.expect_close().await.1, "token expired");
    client.sync().await;
    assert_eq!(keys(&server.tracker.list("room:r").await), vec!["forever"]);
}

async fn longpoll(server: &TestServer, headers: &[(&str, &str)], body: &str) -> Value {
    let method = if body.is_empty() { "GET" } else { "POST" };
    let (_, _, answer) = http(
        server.addr,
        method,
        "/socket/longpoll?vsn=2.0.0",
        headers,
        body.as_bytes(),
    )
    .await;
    serde_json::from_str(&answer).expect("json")
}

#[tokio::test]
async fn a_longpoll_session_ends_when_its_token_expires_and_its_next_poll_gets_410() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let mut watcher = with_token(&server, &token(&claims("watcher")), "").await;
    watcher.join("room:lpexp", json!({})).await;
    watcher.sync().await;
    let auth = token(&expiring_soon("poller"));
    let opened = longpoll(&server, &[("x-phoenix-authtoken", &auth)], "").await;
    assert_eq!(opened["status"], 410, "{opened}");
    let session = opened["token"].as_str().expect("session token").to_string();
    let session_header = ("x-phoenix-longpoll-token", session.as_str());
    let posted = longpoll(
        &server,
        &[("content-type", "application/x-ndjson"), session_header],
        r#"["1","1","room:lpexp","phx_join",{}]"#,
    )
    .await;
    assert_eq!(posted, json!({"status": 200}));
    let joined = watcher.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&joined[4]["joins"]), vec!["poller"]);
    let left = watcher.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&left[4]["leaves"]), vec!["poller"]);

    // The session is over: polls deliver what was queued, then 410 "session gone", which
    // phoenix.js answers by reconnecting (fresh params and authToken), not 403 or a new session.
    for _ in 0..10 {
        let polled = longpoll(&server, &[session_header], "").await;
        if polled["status"] == 200 {
            continue;
        }
        assert_eq!(polled, json!({"status": 410}));
        return;
    }
    panic!("the expired session kept answering 200");
}

#[tokio::test]
async fn after_its_token_expires_a_client_reconnecting_with_a_fresh_one_is_listed_again() {
    let _watchdog = crate::support::watchdog::start();
    let server = secured().await;
    let mut watcher = with_token(&server, &token(&claims("watcher")), "").await;
    watcher.join("room:renew", json!({})).await;
    watcher.sync().await;
    let mut old = with_token(&server, &token(&expiring_soon("renewer")), "").await;
    old.join("room:renew", json!({})).await;
    assert_eq!(old.expect_close().await.0, 1008);
    // What phoenix.js does on that close: reconnect, asking its authToken function again.
    let mut renewed = with_token(&server, &token(&claims("renewer")), "").await;
    renewed.join("room:renew", json!({})).await;
    // The watcher sees join, leave (expiry), join (renewed): the leave came before the rejoin.
    let mut diffs = Vec::new();
    while diffs.len() < 3 {
        let diff = watcher.recv_until(|v| v[3] == "presence_diff").await;
        diffs.push((keys(&diff[4]["joins"]), keys(&diff[4]["leaves"])));
    }
    let renewer = vec!["renewer".to_string()];
    let none = Vec::<String>::new();
    assert_eq!(
        diffs,
        vec![
            (renewer.clone(), none.clone()),
            (none.clone(), renewer.clone()),
            (renewer, none)
        ]
    );
    assert_eq!(
        keys(&server.tracker.list("room:renew").await).len(),
        2,
        "watcher and renewer"
    );
}
