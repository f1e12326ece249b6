//! `POST /api/broadcast/{topic}`: a backend's event reaches every member of a room on every
//! node (two real `rollcall` processes), with the presence API's access rules, and event names
//! of the protocol refused.

use crate::support::cluster::{serial, Node, User, FAST_TIMING};
use crate::support::server::{http, start, Client};
use rollcall_server::config::Security;
use rollcall_server::security::auth::{mint, Claims, Verifier};
use rollcall_server::Config;
use serde_json::{json, Value};

const SECRET: &str = "api-secret";

fn token(rooms: Option<Vec<&str>>) -> String {
    let claims = Claims {
        sub: "backend".into(),
        rooms: rooms.map(|r| r.into_iter().map(String::from).collect()),
        ..Default::default()
    };
    mint(SECRET, &claims).unwrap()
}

#[tokio::test]
async fn a_broadcast_follows_the_presence_apis_access_rules_and_refuses_protocol_events() {
    let server = start(Config {
        security: Security {
            verifier: Verifier::new(&[SECRET]),
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let post = |path: String, auth: Option<String>, body: Value| {
        let addr = server.addr;
        async move {
            let auth = auth.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("content-type", "application/json")];
            if let Some(auth) = &auth {
                headers.push(("authorization", auth.as_str()));
            }
            let (status, _, body) =
                http(addr, "POST", &path, &headers, body.to_string().as_bytes()).await;
            (status, body)
        }
    };
    let body = json!({"event": "news", "payload": {"n": 1}});
    let path = "/api/broadcast/room:lobby".to_string();
    assert_eq!(post(path.clone(), None, body.clone()).await.0, 401);
    let other_rooms = Some(token(Some(vec!["room:other"])));
    assert_eq!(post(path.clone(), other_rooms, body.clone()).await.0, 403);
    let any = Some(token(None));
    let (status, text) = post("/api/broadcast/nowhere".into(), any.clone(), body.clone()).await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = post(path.clone(), any.clone(), json!({"event": "phx_close"})).await;
    assert_eq!(status, 400);
    assert!(text.contains("reserved event name"), "{text}");
    assert_eq!(
        post(
            path.clone(),
            any.clone(),
            json!({"event": "presence_state"})
        )
        .await
        .0,
        400
    );

    let member = format!("vsn=2.0.0&token={}", token(Some(vec!["room:lobby"])));
    let mut c = Client::connect(&server, &member).await;
    c.join("room:lobby", json!({})).await;
    let (status, text) = post(path.clone(), any, body).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"topic": "room:lobby", "event": "news"})
    );
    let got = c.recv_until(|v| v[3] == "news").await;
    assert_eq!(got, json!([null, null, "room:lobby", "news", {"n": 1}]));
}

#[tokio::test]
async fn an_http_broadcast_reaches_members_on_two_nodes() {
    let _serial = serial().await;
    let a = Node::mesh("bc-a", &[], &FAST_TIMING).await;
    let b = Node::mesh("bc-b", &[&a], &FAST_TIMING).await;
    a.wait_peers_up(&["bc-b"]).await;
    b.wait_peers_up(&["bc-a"]).await;
    let on_a = User::join(&a, "ua", "room:news", json!({})).await;
    let on_b = User::join(&b, "ub", "room:news", json!({})).await;
    // Both members see each other: the relay between the nodes is up.
    on_a.wait_keys(&["ua", "ub"]).await;
    on_b.wait_keys(&["ua", "ub"]).await;
    let addr: std::net::SocketAddr = a.addr.parse().unwrap();
    let body = json!({"event": "headline", "payload": {"title": "hello"}}).to_string();
    let (status, _, text) = http(
        addr,
        "POST",
        "/api/broadcast/room:news",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    for user in [&on_a, &on_b] {
        let view = user
            .wait_for("the broadcast", |v| {
                v.events.iter().any(|(e, _)| e == "headline")
            })
            .await;
        let (_, payload) = view.events.iter().find(|(e, _)| e == "headline").unwrap();
        assert_eq!(payload, &json!({"title": "hello"}));
    }
    let (_, metrics) = crate::support::cluster::http(&a.addr, "GET", "/metrics").await;
    assert!(
        metrics.contains("rollcall_api_broadcasts_total 1"),
        "{metrics}"
    );
}
