//! The fetch hook (Phoenix's `fetch/2`): the app's fields on every presence payload, one call
//! per frame, frames still in order when a fetch is slow, and a hook that misbehaves never
//! breaks what clients receive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::server::{http, keys, serve, Client, TestServer};
use rollcall_server::presence::Fetch;
use rollcall_server::{Config, Server};
use serde_json::{json, Map, Value};

/// Every call: (topic, keys of the frame).
type Calls = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// Adds `"user": {"name": KEY}` to each key; the first call sleeps `first_delay`.
struct Users {
    calls: Calls,
    first_delay: Duration,
}

impl Fetch for Users {
    async fn fetch(&self, topic: &str, presences: &mut Map<String, Value>) {
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((topic.to_string(), presences.keys().cloned().collect()));
            calls.len() == 1
        };
        if first {
            tokio::time::sleep(self.first_delay).await;
        }
        for (key, entry) in presences.iter_mut() {
            entry["user"] = json!({"name": key.to_uppercase()});
        }
    }
}

async fn with_hook(hook: impl Fetch) -> TestServer {
    serve(Server::builder(Config::default()).fetch(hook).build()).await
}

fn users(calls: &Calls, first_delay: Duration) -> Users {
    Users {
        calls: calls.clone(),
        first_delay,
    }
}

#[tokio::test]
async fn the_hooks_fields_are_on_state_diffs_list_and_get_by_key_with_one_call_per_frame() {
    let _watchdog = crate::support::watchdog::start();
    let calls = Calls::default();
    let server = with_hook(users(&calls, Duration::ZERO)).await;
    let mut members = Vec::new();
    for key in ["a", "b", "c"] {
        let mut c = Client::user(&server, key).await;
        c.join("room:r", json!({})).await;
        c.sync().await;
        members.push(c);
    }
    calls.lock().unwrap().clear();
    let mut d = Client::user(&server, "d").await;
    d.join("room:r", json!({})).await;
    let state = d.recv_until(|v| v[3] == "presence_state").await;
    assert_eq!(keys(&state[4]), vec!["a", "b", "c"]);
    assert_eq!(state[4]["b"]["user"], json!({"name": "B"}));
    assert!(state[4]["b"]["metas"][0]["phx_ref"].is_string());
    let diff = d.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(diff[4]["joins"]["d"]["user"], json!({"name": "D"}));
    assert_eq!(diff[4]["leaves"], json!({}));
    let seen = members[0]
        .recv_until(|v| v[3] == "presence_diff" && v[4]["joins"]["d"].is_object())
        .await;
    assert_eq!(seen[4], diff[4], "every member gets the same frame");
    // One call for the whole state (three keys), one for the diff's joins; none for an empty
    // side.
    let recorded = calls.lock().unwrap().clone();
    assert_eq!(
        recorded,
        vec![
            (
                "room:r".to_string(),
                vec!["a".into(), "b".into(), "c".into()]
            ),
            ("room:r".to_string(), vec!["d".into()]),
        ]
    );

    let list = server.presence.list("room:r").await;
    assert_eq!(list["c"]["user"], json!({"name": "C"}));
    let one = server.presence.get_by_key("room:r", "a").await.unwrap();
    assert_eq!(one["user"], json!({"name": "A"}));
    // The presence API shows what a presence_state would.
    let (status, _, body) = http(server.addr, "GET", "/api/presence/room:r", &[], b"").await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["presences"]["d"]["user"], json!({"name": "D"}));
}

#[tokio::test]
async fn a_slow_fetch_keeps_each_topics_frames_in_order() {
    let _watchdog = crate::support::watchdog::start();
    let calls = Calls::default();
    let server = with_hook(users(&calls, Duration::from_millis(300))).await;
    // Someone is there, so the joiner's state has a key to fetch for.
    let _bot = server.presence.track("room:slow", "z", json!({})).unwrap();
    let mut c = Client::user(&server, "a").await;
    // The state's fetch is the first call (slow); the join's diff is fetched at once, and
    // must still come after the state.
    c.join("room:slow", json!({})).await;
    let first = c
        .recv_until(|v| v[3] == "presence_state" || v[3] == "presence_diff")
        .await;
    assert_eq!(first[3], "presence_state");
    assert_eq!(first[4]["z"]["user"], json!({"name": "Z"}));
    assert_eq!(
        calls.lock().unwrap().first().map(|c| c.1.clone()),
        Some(vec!["z".to_string()])
    );
    let diff = c.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(diff[4]["joins"]["a"]["user"], json!({"name": "A"}));
}

#[tokio::test]
async fn a_hook_cannot_drop_metas_or_invent_keys() {
    let _watchdog = crate::support::watchdog::start();
    struct Vandal;
    impl Fetch for Vandal {
        async fn fetch(&self, _topic: &str, presences: &mut Map<String, Value>) {
            for entry in presences.values_mut() {
                entry["metas"] = json!([]);
                entry["extra"] = json!(1);
            }
            presences.insert("ghost".into(), json!({"metas": [{"phx_ref": "x"}]}));
        }
    }
    let server = with_hook(Vandal).await;
    let mut c = Client::user(&server, "a").await;
    c.join("room:v", json!({})).await;
    let diff = c.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(keys(&diff[4]["joins"]), vec!["a"]);
    assert_eq!(diff[4]["joins"]["a"]["metas"].as_array().unwrap().len(), 1);
    assert_eq!(diff[4]["joins"]["a"]["extra"], 1);
}

#[tokio::test]
async fn a_panicking_hook_leaves_frames_as_they_were() {
    let _watchdog = crate::support::watchdog::start();
    struct Panics;
    impl Fetch for Panics {
        async fn fetch(&self, _topic: &str, _presences: &mut Map<String, Value>) {
            panic!("fetch panics on purpose");
        }
    }
    let server = with_hook(Panics).await;
    let mut c = Client::user(&server, "a").await;
    c.join("room:p", json!({"meta": {"s": 1}})).await;
    let diff = c.recv_until(|v| v[3] == "presence_diff").await;
    assert_eq!(diff[4]["joins"]["a"]["metas"][0]["s"], 1);
    assert_eq!(
        server.presence.list("room:p").await["a"]["metas"][0]["s"],
        1
    );
}

#[tokio::test]
async fn joiners_waiting_behind_a_slow_fetch_share_one_call_each_with_its_own_join_ref() {
    let _watchdog = crate::support::watchdog::start();
    let calls = Calls::default();
    let server = with_hook(users(&calls, Duration::from_millis(400))).await;
    let _bot = server.presence.track("room:wait", "z", json!({})).unwrap();
    // Observers are not listed: their joins change nothing, so every one of them is sent the
    // room as last sent, and all but the first wait behind the first one's (slow) fetch.
    let mut joined = Vec::new();
    for i in 0..6 {
        let mut c = Client::user(&server, &format!("o{i}")).await;
        let join_ref = c.join("room:wait", json!({"track": false})).await;
        joined.push((c, join_ref));
    }
    for (c, join_ref) in &mut joined {
        let state = c.recv_until(|v| v[3] == "presence_state").await;
        assert_eq!(state[0], json!(join_ref), "each joiner's own join_ref");
        assert_eq!(keys(&state[4]), vec!["z"]);
        assert_eq!(state[4]["z"]["user"], json!({"name": "Z"}));
    }
    // The first joiner's call, then one for the five that waited (not five).
    let recorded = calls.lock().unwrap().clone();
    assert_eq!(
        recorded,
        vec![
            ("room:wait".to_string(), vec!["z".to_string()]),
            ("room:wait".to_string(), vec!["z".to_string()]),
        ]
    );
}
