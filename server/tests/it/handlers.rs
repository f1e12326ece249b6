//! Channel handlers over real WebSockets on 127.0.0.1: an app's handler decides joins, tracks,
//! replies, pushes and broadcasts; a panicking handler ends its own channel and nothing else;
//! `terminate` hears how each channel ended; routes are tried in order before the presence
//! rooms.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::server::{keys, serve, Client};
use rollcall_server::handler::{Channel, ChannelSocket, Exit, Joined, Refusal, Reply};
use rollcall_server::security::auth::{mint, Claims, Verifier};
use rollcall_server::{Config, Payload, Server};
use serde_json::{json, Value};

/// What the test handler was told, in order.
type Log = Arc<Mutex<Vec<String>>>;

/// A handler exercising the API: `params.refuse` refuses, `params.key` picks the key,
/// `params.track` tracks with it; events `echo`, `fail`, `push_then_ok`, `shout`, `shout_all`,
/// `later`, `stop`, `panic`, `count`.
struct Test {
    log: Log,
}

#[derive(Clone)]
struct Count(u64);

impl Channel for Test {
    async fn join(
        &self,
        topic: &str,
        params: &Value,
        socket: &mut ChannelSocket,
    ) -> Result<Joined, Refusal> {
        self.log.lock().unwrap().push(format!("join {topic}"));
        if let Some(reason) = params["refuse"].as_str() {
            return Err(Refusal::new(reason));
        }
        if params["panic"] == json!(true) {
            panic!("join panics on purpose");
        }
        socket.assign(Count(0));
        let mut joined = Joined::new().reply(json!({
            "key": socket.key(),
            "claims_sub": socket.claims().map(|c| c.key.clone()),
            "claims_meta": socket.claims().map(|c| Value::Object(c.meta.clone())),
            "param": socket.connect_params().get("app"),
        }));
        if let Some(key) = params["key"].as_str() {
            joined = joined.key(key);
        }
        if let Some(meta) = params.get("track") {
            joined = joined.presence_state().track(meta.clone());
        }
        Ok(joined)
    }

    async fn handle_in(&self, event: &str, payload: Payload, socket: &mut ChannelSocket) -> Reply {
        match event {
            "echo" => Reply::ok(payload),
            "fail" => Reply::error(json!({"reason": "failed on purpose"})),
            "push_then_ok" => {
                socket.push("pushed", json!({"n": 1}));
                Reply::ok(json!({"after": "push"}))
            }
            "shout" => {
                socket.broadcast_from("shout", payload).unwrap();
                Reply::none()
            }
            "shout_all" => {
                socket.broadcast("shout", payload).unwrap();
                Reply::ok(json!({}))
            }
            "reserved" => match socket.broadcast("presence_diff", json!({})) {
                Ok(()) => Reply::ok(json!({})),
                Err(e) => Reply::error(json!({"reason": e.to_string()})),
            },
            "later" => {
                let reply = socket.defer_reply();
                let pusher = socket.pusher();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    pusher.push("from_task", json!({}));
                    reply.ok(json!({"late": true}));
                });
                Reply::none()
            }
            "count" => {
                let count = socket.assigns_mut::<Count>().map(|c| {
                    c.0 += 1;
                    c.0
                });
                Reply::ok(json!({"count": count}))
            }
            "retrack" => {
                socket
                    .track(payload.as_json().cloned().unwrap_or_default())
                    .unwrap();
                Reply::ok(json!({}))
            }
            "stop" => Reply::ok(json!({"bye": true})).stop(),
            "panic" => panic!("handle_in panics on purpose"),
            _ => Reply::error(json!({"reason": "unknown"})),
        }
    }

    async fn terminate(&self, reason: Exit, socket: &mut ChannelSocket) {
        self.log
            .lock()
            .unwrap()
            .push(format!("terminate {} {reason:?}", socket.topic()));
    }
}

async fn server_with(config: Config) -> (crate::support::server::TestServer, Log) {
    let log = Log::default();
    let server = Server::builder(config)
        .channel("app:*", Test { log: log.clone() })
        .build();
    (serve(server).await, log)
}

async fn server() -> (crate::support::server::TestServer, Log) {
    server_with(Config::default()).await
}

/// Joins `topic` with `payload`; returns the whole reply frame.
async fn join_reply(c: &mut Client, topic: &str, payload: Value) -> Value {
    let r = c.next_ref();
    c.send_json(json!([r, r, topic, "phx_join", payload])).await;
    c.recv_until(|v| v[1] == json!(r)).await
}

/// The reply to the push with ref `r` among `frames`.
fn reply_to(frames: &[Value], r: &str) -> Value {
    frames
        .iter()
        .find(|v| v[1] == json!(r) && v[3] == "phx_reply")
        .cloned()
        .unwrap_or_else(|| panic!("no reply to {r} in {frames:?}"))
}

async fn until_log(log: &Log, entry: &str) {
    let deadline = tokio::time::Instant::now() + crate::support::server::DEADLINE;
    while !log.lock().unwrap().iter().any(|e| e == entry) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {entry:?} in {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_handler_refuses_a_join_with_its_reason_and_keeps_nothing() {
    let (server, _log) = server().await;
    let mut c = Client::connect(&server, "vsn=2.0.0&user_id=u").await;
    let reply = join_reply(&mut c, "app:1", json!({"refuse": "not today"})).await;
    assert_eq!(
        reply,
        json!(["1", "1", "app:1", "phx_reply", {"status": "error", "response": {"reason": "not today"}}])
    );
    // Not joined: events on the topic are unmatched.
    let r = c.push("1", "app:1", "echo", json!({})).await;
    let answer = c.recv_until(|v| v[1] == json!(r)).await;
    assert_eq!(answer[4]["response"]["reason"], "unmatched topic");
}

#[tokio::test]
async fn a_join_answers_with_the_handlers_reply_and_tracks_under_the_key_it_chose() {
    let (server, _log) = server().await;
    let mut c = Client::connect(&server, "vsn=2.0.0&user_id=u&app=x").await;
    let reply = join_reply(
        &mut c,
        "app:1",
        json!({"key": "bot-7", "track": {"kind": "bot"}}),
    )
    .await;
    assert_eq!(reply[4]["status"], "ok");
    assert_eq!(
        reply[4]["response"],
        json!({"key": "u", "claims_sub": null, "claims_meta": null, "param": "x"})
    );
    // presence_state (empty before the track), then the join's own diff.
    let state = c.recv_until(|v| v[3] == "presence_state").await;
    assert_eq!(state[0], "1");
    assert_eq!(state[4], json!({}));
    let diff = c.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&diff[4]["joins"]), vec!["bot-7"]);
    let meta = &diff[4]["joins"]["bot-7"]["metas"][0];
    assert_eq!(meta["kind"], "bot");
    assert!(meta["node"].is_string(), "the server adds node: {meta}");
    assert!(
        meta.get("online_at").is_none(),
        "online_at is the room's, not every handler's"
    );
    let listed = server.presence.list("app:1").await;
    assert_eq!(keys(&listed), vec!["bot-7"]);
}

#[tokio::test]
async fn a_join_without_track_subscribes_without_listing_or_state() {
    let (server, _log) = server().await;
    let mut watcher = Client::user(&server, "w").await;
    join_reply(&mut watcher, "app:1", json!({})).await;
    let mut member = Client::user(&server, "m").await;
    join_reply(&mut member, "app:1", json!({"track": {}})).await;
    // The watcher is not listed, got no state, but sees the member's join.
    let diff = watcher.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&diff[4]["joins"]), vec!["m"]);
    let frames = watcher.sync().await;
    assert!(
        frames.iter().all(|v| v[3] != "presence_state"),
        "{frames:?}"
    );
    assert_eq!(keys(&server.presence.list("app:1").await), vec!["m"]);
}

#[tokio::test]
async fn replies_pushes_and_broadcasts_reach_whom_they_should() {
    let (server, _log) = server().await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    join_reply(&mut a, "app:1", json!({})).await;
    join_reply(&mut b, "app:1", json!({})).await;

    let r = a.push("1", "app:1", "echo", json!({"x": 1})).await;
    let reply = a.recv_until(|v| v[1] == json!(r)).await;
    assert_eq!(reply[0], "1", "the reply carries the channel's join_ref");
    assert_eq!(reply[4], json!({"status": "ok", "response": {"x": 1}}));

    let r = a.push("1", "app:1", "fail", json!({})).await;
    let reply = a.recv_until(|v| v[1] == json!(r)).await;
    assert_eq!(
        reply[4],
        json!({"status": "error", "response": {"reason": "failed on purpose"}})
    );

    // A push made during the call goes out before the call's reply, with the join_ref.
    let r = a.push("1", "app:1", "push_then_ok", json!({})).await;
    let frames = a.sync().await;
    let at = frames.iter().position(|v| v[1] == json!(r)).unwrap();
    assert_eq!(
        frames[at - 1],
        json!(["1", null, "app:1", "pushed", {"n": 1}])
    );
    assert_eq!(frames[at][4]["response"], json!({"after": "push"}));

    // broadcast_from: everyone but the sender; no reply for Reply::none.
    let r = a.push("1", "app:1", "shout", json!({"hi": 1})).await;
    let seen = b.recv_until(|v| v[3] == "shout").await;
    assert_eq!(seen, json!([null, null, "app:1", "shout", {"hi": 1}]));
    let frames = a.sync().await;
    assert!(
        frames.iter().all(|v| v[3] != "shout" && v[1] != json!(r)),
        "{frames:?}"
    );

    // broadcast: the sender too.
    a.push("1", "app:1", "shout_all", json!({"all": 1})).await;
    a.recv_until(|v| v[3] == "shout" && v[4]["all"] == 1).await;
    b.recv_until(|v| v[3] == "shout" && v[4]["all"] == 1).await;

    // Reserved names are refused for broadcasts.
    let r = a.push("1", "app:1", "reserved", json!({})).await;
    let frames = a.sync().await;
    assert_eq!(reply_to(&frames, &r)[4]["status"], "error");
    assert!(frames.iter().all(|v| v[3] != "presence_diff"), "{frames:?}");
}

#[tokio::test]
async fn a_deferred_reply_and_a_pusher_answer_from_another_task() {
    let (server, _log) = server().await;
    let mut c = Client::user(&server, "u").await;
    join_reply(&mut c, "app:1", json!({})).await;
    let r = c.push("1", "app:1", "later", json!({})).await;
    let pushed = c.recv_until(|v| v[3] == "from_task").await;
    assert_eq!(pushed, json!(["1", null, "app:1", "from_task", {}]));
    let reply = c.recv_until(|v| v[1] == json!(r)).await;
    assert_eq!(
        reply,
        json!(["1", r, "app:1", "phx_reply", {"status": "ok", "response": {"late": true}}])
    );
}

#[tokio::test]
async fn assigns_live_as_long_as_the_channel() {
    let (server, _log) = server().await;
    let mut c = Client::user(&server, "u").await;
    join_reply(&mut c, "app:1", json!({})).await;
    for n in 1..=3 {
        let r = c.push("1", "app:1", "count", json!({})).await;
        let frames = c.sync().await;
        assert_eq!(reply_to(&frames, &r)[4]["response"]["count"], n);
    }
}

#[tokio::test]
async fn a_panic_in_handle_in_closes_that_channel_with_phx_error_and_nothing_else() {
    let (server, log) = server().await;
    let mut watcher = Client::user(&server, "w").await;
    join_reply(&mut watcher, "app:1", json!({})).await;
    let mut c = Client::user(&server, "u").await;
    join_reply(&mut c, "app:1", json!({"track": {}})).await;
    let r = c.next_ref();
    c.send_json(json!(["2", r, "app:2", "phx_join", {}])).await;
    c.recv_until(|v| v[1] == json!(r)).await;
    watcher
        .recv_until(|v| v[3] == "presence_diff" && keys(&v[4]["joins"]) == ["u"])
        .await;

    let r = c.push("1", "app:1", "panic", json!({})).await;
    let error = c.recv_until(|v| v[3] == "phx_error").await;
    assert_eq!(
        error,
        json!(["1", "1", "app:1", "phx_error", {"reason": "channel_crash"}])
    );
    // The crashed channel's presence leaves; no reply, no terminate.
    watcher
        .recv_until(|v| v[3] == "presence_diff" && keys(&v[4]["leaves"]) == ["u"])
        .await;
    let frames = c.sync().await;
    assert!(frames.iter().all(|v| v[1] != json!(r)), "{frames:?}");
    assert!(!log
        .lock()
        .unwrap()
        .iter()
        .any(|e| e == "terminate app:1 Closed"));
    // The connection and its other channel go on; the crashed topic can be joined again.
    let r2 = c.push("2", "app:2", "echo", json!({"still": "here"})).await;
    let reply = c.recv_until(|v| v[1] == json!(r2)).await;
    assert_eq!(reply[4]["response"], json!({"still": "here"}));
    let rejoin = join_reply(&mut c, "app:1", json!({})).await;
    assert_eq!(rejoin[4]["status"], "ok");
}

#[tokio::test]
async fn a_panic_in_join_answers_join_crashed() {
    let (server, _log) = server().await;
    let mut c = Client::user(&server, "u").await;
    let reply = join_reply(&mut c, "app:1", json!({"panic": true})).await;
    assert_eq!(
        reply[4],
        json!({"status": "error", "response": {"reason": "join crashed"}})
    );
    let again = join_reply(&mut c, "app:1", json!({})).await;
    assert_eq!(again[4]["status"], "ok");
}

#[tokio::test]
async fn terminate_hears_leave_stop_replace_and_close() {
    let (server, log) = server().await;
    let mut c = Client::user(&server, "u").await;
    join_reply(&mut c, "app:left", json!({})).await;
    let r = c.push("1", "app:left", "phx_leave", json!({})).await;
    c.recv_until(|v| v[1] == json!(r)).await;
    let close = c.recv_until(|v| v[3] == "phx_close").await;
    assert_eq!(close, json!(["1", "1", "app:left", "phx_close", {}]));
    until_log(&log, "terminate app:left Left").await;

    let joined = join_reply(&mut c, "app:stop", json!({})).await;
    let join_ref = joined[0].as_str().unwrap().to_string();
    let r = c.push(&join_ref, "app:stop", "stop", json!({})).await;
    let reply = c.recv_until(|v| v[1] == json!(r)).await;
    assert_eq!(reply[4]["response"], json!({"bye": true}));
    c.recv_until(|v| v[3] == "phx_close" && v[2] == "app:stop")
        .await;
    until_log(&log, "terminate app:stop Stopped").await;

    join_reply(&mut c, "app:twice", json!({})).await;
    let second = join_reply(&mut c, "app:twice", json!({})).await;
    assert_eq!(second[4]["status"], "ok");
    until_log(&log, "terminate app:twice Replaced").await;

    drop(c);
    until_log(&log, "terminate app:twice Closed").await;
}

#[tokio::test]
async fn handler_tracks_get_the_tokens_trusted_meta_and_claims_are_visible() {
    let secret = "s3cret";
    let config = Config {
        security: rollcall_server::config::Security {
            verifier: Verifier::new(&[secret]),
            ..Default::default()
        },
        ..Config::default()
    };
    let (server, _log) = server_with(config).await;
    let claims = Claims {
        sub: "alice".into(),
        meta: Some(serde_json::from_value(json!({"role": "admin"})).unwrap()),
        ..Default::default()
    };
    let token = mint(secret, &claims).unwrap();
    let mut c = Client::connect(&server, &format!("vsn=2.0.0&token={token}")).await;
    let reply = join_reply(&mut c, "app:1", json!({"track": {"role": "guest", "x": 1}})).await;
    assert_eq!(reply[4]["response"]["claims_sub"], "alice");
    assert_eq!(
        reply[4]["response"]["claims_meta"],
        json!({"role": "admin"})
    );
    let diff = c.recv_until(|v| v[3] == "presence_diff").await;
    let meta = &diff[4]["joins"]["alice"]["metas"][0];
    assert_eq!(
        meta["role"], "admin",
        "the token's meta wins over the handler's"
    );
    assert_eq!(meta["x"], 1);
    // A later track through the socket keeps the trusted fields too.
    c.push("1", "app:1", "retrack", json!({"role": "guest", "x": 2}))
        .await;
    let diff = c
        .recv_until(|v| v[3] == "presence_diff" && !v[4]["leaves"].as_object().unwrap().is_empty())
        .await;
    let meta = &diff[4]["joins"]["alice"]["metas"][0];
    assert_eq!(
        (meta["role"].clone(), meta["x"].clone()),
        (json!("admin"), json!(2))
    );
}

#[tokio::test]
async fn routes_are_tried_in_order_and_the_presence_rooms_come_last() {
    struct Refuse;
    impl Channel for Refuse {
        async fn join(&self, _: &str, _: &Value, _: &mut ChannelSocket) -> Result<Joined, Refusal> {
            Err(Refusal::new("vip only"))
        }
    }
    let server = Server::builder(Config::default())
        .channel("room:vip", Refuse)
        .build();
    let server = serve(server).await;
    let mut c = Client::user(&server, "u").await;
    let vip = join_reply(&mut c, "room:vip", json!({})).await;
    assert_eq!(vip[4]["response"]["reason"], "vip only");
    // Any other room:* topic is the built-in presence room.
    let lobby = join_reply(&mut c, "room:lobby", json!({"meta": {"s": 1}})).await;
    assert_eq!(lobby[4]["status"], "ok");
    let diff = c.recv_until(|v| v[3] == "presence_diff").await;
    assert!(diff[4]["joins"]["u"]["metas"][0]["online_at"].is_u64());
}

#[tokio::test]
async fn a_binary_push_reaches_the_handler_as_bytes() {
    struct Bytes;
    impl Channel for Bytes {
        async fn join(&self, _: &str, _: &Value, _: &mut ChannelSocket) -> Result<Joined, Refusal> {
            Ok(Joined::new())
        }
        async fn handle_in(&self, _: &str, payload: Payload, _: &mut ChannelSocket) -> Reply {
            match payload {
                Payload::Binary(b) => Reply::ok(json!({"len": b.len()})),
                Payload::Json(_) => Reply::error(json!({})),
            }
        }
    }
    let server = serve(
        Server::builder(Config::default())
            .channel("bin", Bytes)
            .build(),
    )
    .await;
    let mut c = Client::user(&server, "u").await;
    join_reply(&mut c, "bin", json!({})).await;
    // V2 binary push: kind 0, join_ref "1", ref "2", topic "bin", event "e", payload 3 bytes.
    let mut frame = vec![0u8, 1, 1, 3, 1];
    frame.extend_from_slice(b"12bine");
    frame.extend_from_slice(&[7, 8, 9]);
    use futures_util::SinkExt;
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(frame))
        .await
        .unwrap();
    let reply = c.recv_until(|v| v[1] == "2").await;
    assert_eq!(reply[4]["response"], json!({"len": 3}));
}

#[tokio::test]
async fn frames_keep_flowing_to_a_client_while_its_handler_is_busy() {
    struct Slow {
        release: Arc<tokio::sync::Notify>,
    }
    impl Channel for Slow {
        async fn join(&self, _: &str, _: &Value, _: &mut ChannelSocket) -> Result<Joined, Refusal> {
            Ok(Joined::new())
        }
        async fn handle_in(
            &self,
            event: &str,
            payload: Payload,
            socket: &mut ChannelSocket,
        ) -> Reply {
            if event == "wait" {
                self.release.notified().await;
                return Reply::ok(json!({"released": true}));
            }
            let _ = socket.broadcast_from(event, payload);
            Reply::none()
        }
    }
    let release = Arc::new(tokio::sync::Notify::new());
    let config = Config {
        // Room for a few of the frames sent while the handler waits: the queue must drain.
        max_queued_bytes: 512,
        ..Config::default()
    };
    let handler = Slow {
        release: release.clone(),
    };
    let server = serve(Server::builder(config).channel("slow", handler).build()).await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    join_reply(&mut a, "slow", json!({})).await;
    join_reply(&mut b, "slow", json!({})).await;
    let r = a.push("1", "slow", "wait", json!({})).await;
    // More frames than the queue holds, each received while the handler still waits.
    for n in 0..40 {
        b.push("1", "slow", "tick", json!({"n": n})).await;
        let tick = a.recv_until(|v| v[3] == "tick").await;
        assert_eq!(tick[4]["n"], n);
    }
    release.notify_one();
    let reply = a.recv_until(|v| v[1] == json!(r)).await;
    assert_eq!(reply[4]["response"], json!({"released": true}));
}
