//! The presence room protocol over real WebSockets on 127.0.0.1.

use crate::support::server::{keys, start, start_default, within, Client};
use rollcall_server::Config;
use serde_json::{json, Value};

fn is_diff(v: &Value) -> bool {
    v[3] == "presence_diff"
}

/// The metas of `key` in a presence map.
fn metas<'a>(map: &'a Value, key: &str) -> &'a Vec<Value> {
    map[key]["metas"].as_array().expect("metas array")
}

#[tokio::test]
async fn join_sends_reply_then_state_without_the_joiner_then_a_diff_with_it() {
    let server = start_default().await;
    let mut a = Client::user(&server, "alice").await;
    a.join("room:lobby", json!({"meta": {"status": "here"}}))
        .await;
    a.sync().await;
    let mut b = Client::user(&server, "bob").await;
    b.send_json(json!(["1", "1", "room:lobby", "phx_join", {"meta": {"status": "away"}}]))
        .await;
    let frames = b.sync().await;
    assert_eq!(
        frames[0],
        json!(["1", "1", "room:lobby", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(frames[1][0], "1");
    assert_eq!(frames[1][1], json!(null));
    assert_eq!(frames[1][3], "presence_state");
    assert_eq!(keys(&frames[1][4]), vec!["alice"]);
    assert_eq!(metas(&frames[1][4], "alice")[0]["status"], "here");
    // The joiner's own join, as a broadcast without refs.
    assert_eq!(frames[2][0], json!(null));
    assert_eq!(frames[2][1], json!(null));
    assert_eq!(frames[2][3], "presence_diff");
    let joins = &frames[2][4]["joins"];
    assert_eq!(keys(joins), vec!["bob"]);
    let meta = &metas(joins, "bob")[0];
    assert_eq!(meta["status"], "away");
    assert!(meta["online_at"].is_u64());
    assert!(meta["phx_ref"].is_string());
    assert_eq!(frames[2][4]["leaves"], json!({}));
    // The member already there sees the same join.
    let seen = a.recv_until(is_diff).await;
    assert_eq!(seen[4], frames[2][4]);
}

#[tokio::test]
async fn every_track_gets_a_unique_phx_ref() {
    let server = start_default().await;
    let mut a = Client::user(&server, "same").await;
    let mut b = Client::user(&server, "same").await;
    a.join("room:r", json!({})).await;
    a.sync().await;
    b.join("room:r", json!({})).await;
    let state = b.recv_until(|v| v[3] == "presence_state").await;
    let diff = b.recv_until(is_diff).await;
    let ref_a = &metas(&state[4], "same")[0]["phx_ref"];
    let ref_b = &metas(&diff[4]["joins"], "same")[0]["phx_ref"];
    assert_ne!(ref_a, ref_b);
}

#[tokio::test]
async fn one_user_in_two_tabs_is_one_key_with_two_metas() {
    let server = start_default().await;
    let mut tab1 = Client::user(&server, "u").await;
    let mut tab2 = Client::user(&server, "u").await;
    tab1.join("room:t", json!({"meta": {"tab": 1}})).await;
    tab1.sync().await;
    tab2.join("room:t", json!({"meta": {"tab": 2}})).await;
    tab2.sync().await;
    let list = server.tracker.list("room:t").await;
    assert_eq!(keys(&list), vec!["u"]);
    let tabs: Vec<&Value> = metas(&list, "u").iter().map(|m| &m["tab"]).collect();
    assert_eq!(tabs, vec![&json!(1), &json!(2)]);
}

#[tokio::test]
async fn an_observer_receives_presence_but_is_not_listed() {
    let server = start_default().await;
    let mut watcher = Client::user(&server, "watcher").await;
    watcher.join("room:o", json!({"track": false})).await;
    let frames = watcher.sync().await;
    assert_eq!(
        frames.len(),
        1,
        "state only, no diff of its own: {frames:?}"
    );
    assert_eq!(frames[0][3], "presence_state");
    let mut member = Client::user(&server, "member").await;
    member.join("room:o", json!({})).await;
    let diff = watcher.recv_until(is_diff).await;
    assert_eq!(keys(&diff[4]["joins"]), vec!["member"]);
    member.sync().await;
    assert_eq!(keys(&server.tracker.list("room:o").await), vec!["member"]);
}

#[tokio::test]
async fn track_event_updates_the_meta_with_one_leave_and_join_diff() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let jr = a.join("room:u", json!({"meta": {"status": "away"}})).await;
    let first = a.recv_until(is_diff).await;
    let old_meta = metas(&first[4]["joins"], "a")[0].clone();
    let r = a
        .push(&jr, "room:u", "track", json!({"status": "busy"}))
        .await;
    let frames = a.sync().await;
    assert!(
        frames.contains(&json!([jr, r, "room:u", "phx_reply", {"status": "ok", "response": {}}]))
    );
    let diffs: Vec<&Value> = frames.iter().filter(|f| is_diff(f)).collect();
    assert_eq!(diffs.len(), 1, "{frames:?}");
    let d = &diffs[0][4];
    assert_eq!(metas(&d["leaves"], "a"), &vec![old_meta.clone()]);
    let new_meta = &metas(&d["joins"], "a")[0];
    assert_eq!(new_meta["status"], "busy");
    assert_eq!(new_meta["phx_ref_prev"], old_meta["phx_ref"]);
    assert_ne!(new_meta["phx_ref"], old_meta["phx_ref"]);
    assert_eq!(new_meta["online_at"], old_meta["online_at"]);
}

#[tokio::test]
async fn untrack_stops_listing_but_keeps_the_subscription_and_track_lists_again() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    let ja = a.join("room:x", json!({})).await;
    a.sync().await;
    let jb = b.join("room:x", json!({})).await;
    b.sync().await;
    let r = a.push(&ja, "room:x", "untrack", json!({})).await;
    let frames = a.sync().await;
    assert!(
        frames.contains(&json!([ja, r, "room:x", "phx_reply", {"status": "ok", "response": {}}]))
    );
    let left = b.recv_until(is_diff).await;
    assert_eq!(keys(&left[4]["leaves"]), vec!["a"]);
    assert_eq!(keys(&server.tracker.list("room:x").await), vec!["b"]);
    // Still subscribed: a sees b's relayed event.
    b.push(&jb, "room:x", "ping", json!({"n": 1})).await;
    let relayed = a.recv_until(|v| v[3] == "ping").await;
    assert_eq!(relayed, json!([null, null, "room:x", "ping", {"n": 1}]));
    // Tracking again lists a again, as a join (no leave).
    a.push(&ja, "room:x", "track", json!({"s": 2})).await;
    let back = b.recv_until(is_diff).await;
    assert_eq!(keys(&back[4]["joins"]), vec!["a"]);
    assert_eq!(back[4]["leaves"], json!({}));
}

#[tokio::test]
async fn client_events_are_relayed_to_the_others_and_the_sender_gets_ok() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    let ja = a.join("room:chat", json!({})).await;
    b.join("room:chat", json!({})).await;
    a.sync().await;
    b.sync().await;
    let r = a
        .push(&ja, "room:chat", "new_msg", json!({"body": "hi"}))
        .await;
    let own = a.sync().await;
    assert_eq!(
        own,
        vec![json!([ja, r, "room:chat", "phx_reply", {"status": "ok", "response": {}}])],
        "the sender gets its reply, not its own event"
    );
    assert_eq!(
        b.recv_json().await,
        json!([null, null, "room:chat", "new_msg", {"body": "hi"}])
    );
}

#[tokio::test]
async fn reserved_and_malformed_event_names_get_an_error_reply() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let ja = a.join("room:e", json!({})).await;
    a.sync().await;
    for (event, reason) in [
        ("phx_custom", "reserved event name"),
        ("presence_diff", "reserved event name"),
        ("chan_reply_3", "reserved event name"),
        (
            "bad name",
            "invalid event name: use 1-64 characters of A-Z a-z 0-9 _ : . -",
        ),
        (
            "",
            "invalid event name: use 1-64 characters of A-Z a-z 0-9 _ : . -",
        ),
    ] {
        let r = a.push(&ja, "room:e", event, json!({})).await;
        assert_eq!(
            a.recv_json().await,
            json!([ja, r, "room:e", "phx_reply", {"status": "error", "response": {"reason": reason}}]),
            "event {event:?}"
        );
    }
}

/// phoenix.js hands an event named `chan_reply_<ref>` to the push waiting on that ref: a member
/// that could relay one would answer another member's push in its place.
#[tokio::test]
async fn a_member_cannot_relay_a_reply_into_another_members_push() {
    let server = start_default().await;
    let mut mallory = Client::user(&server, "mallory").await;
    let mut alice = Client::user(&server, "alice").await;
    let jm = mallory.join("room:r", json!({})).await;
    alice.join("room:r", json!({})).await;
    mallory.sync().await;
    alice.sync().await;
    for event in [
        "chan_reply_4",
        "phx_reply",
        "presence_diff",
        "presence_state",
    ] {
        let r = mallory
            .push(
                &jm,
                "room:r",
                event,
                json!({"status": "ok", "response": {"forged": true}}),
            )
            .await;
        assert_eq!(
            mallory.recv_json().await,
            json!([jm, r, "room:r", "phx_reply", {"status": "error", "response": {"reason": "reserved event name"}}]),
            "{event}"
        );
    }
    mallory.push(&jm, "room:r", "shout", json!({"n": 1})).await;
    // The first relayed event alice gets is the ordinary one.
    let first = alice.recv_until(|v| !is_diff(v)).await;
    assert_eq!(first, json!([null, null, "room:r", "shout", {"n": 1}]));
}

/// `phx_ref` and `phx_ref_prev` are the tracker's, `online_at` and `node` the server's: what a
/// client puts in those fields of its meta, on join or on track, is never what others see.
#[tokio::test]
async fn a_clients_own_server_fields_in_a_meta_are_replaced_on_join_and_on_track() {
    let server = start_default().await;
    let mut watcher = Client::user(&server, "watcher").await;
    watcher.join("room:f", json!({})).await;
    watcher.sync().await;
    let forged = json!({
        "status": "here",
        "phx_ref": "mine",
        "phx_ref_prev": "someone-elses",
        "online_at": 1,
        "node": "elsewhere",
    });
    let mut m = Client::user(&server, "m").await;
    let jm = m.join("room:f", json!({"meta": forged})).await;
    let joined = watcher
        .recv_until(|v| is_diff(v) && v[4]["joins"].get("m").is_some())
        .await;
    let meta = &metas(&joined[4]["joins"], "m")[0];
    assert_eq!(meta["status"], "here");
    assert!(
        meta["phx_ref"].is_string() && meta["phx_ref"] != "mine",
        "{meta}"
    );
    assert!(
        meta.get("phx_ref_prev").is_none(),
        "a first track has none: {meta}"
    );
    assert!(meta["online_at"].as_u64().is_some_and(|t| t > 1), "{meta}");
    assert_ne!(meta["node"], "elsewhere");
    let first_ref = meta["phx_ref"].clone();

    m.push(&jm, "room:f", "track", forged.clone()).await;
    let updated = watcher
        .recv_until(|v| is_diff(v) && v[4]["joins"].get("m").is_some())
        .await;
    let meta = &metas(&updated[4]["joins"], "m")[0];
    assert_eq!(
        meta["phx_ref_prev"], first_ref,
        "the previous version's ref: {meta}"
    );
    assert!(
        meta["phx_ref"] != "mine" && meta["phx_ref"] != first_ref,
        "{meta}"
    );
    assert_ne!(meta["online_at"], 1);
    assert_ne!(meta["node"], "elsewhere");
    // The state a newcomer gets says the same.
    let mut late = Client::user(&server, "late").await;
    late.join("room:f", json!({})).await;
    let state = late.recv_until(|v| v[3] == "presence_state").await;
    assert_eq!(&metas(&state[4], "m")[0], meta);
}

#[tokio::test]
async fn leaving_the_channel_is_seen_by_the_others() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    let ja = a.join("room:lv", json!({})).await;
    a.sync().await;
    b.join("room:lv", json!({})).await;
    b.sync().await;
    a.push(&ja, "room:lv", "phx_leave", json!({})).await;
    let diff = b.recv_until(is_diff).await;
    assert_eq!(keys(&diff[4]["leaves"]), vec!["a"]);
    assert_eq!(diff[4]["joins"], json!({}));
}

#[tokio::test]
async fn closing_the_socket_is_seen_by_the_others() {
    let server = start_default().await;
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    a.join("room:cl", json!({})).await;
    a.sync().await;
    b.join("room:cl", json!({})).await;
    b.sync().await;
    drop(a); // TCP goes away without a close handshake
    let diff = b.recv_until(is_diff).await;
    assert_eq!(keys(&diff[4]["leaves"]), vec!["a"]);
}

#[tokio::test]
async fn a_dead_connection_is_seen_leaving_after_the_idle_timeout() {
    let server = start(Config {
        idle_timeout: std::time::Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut silent = Client::user(&server, "silent").await;
    let mut b = Client::user(&server, "b").await;
    silent.join("room:dead", json!({})).await;
    b.join("room:dead", json!({})).await;
    // b keeps heartbeating (sync) while waiting; silent says nothing.
    let diff = within("the silent member to leave", async {
        loop {
            let frames = b.sync().await;
            if let Some(d) = frames
                .into_iter()
                .find(|f| is_diff(f) && f[4]["leaves"] != json!({}))
            {
                break d;
            }
        }
    })
    .await;
    assert_eq!(keys(&diff[4]["leaves"]), vec!["silent"]);
}

#[tokio::test]
async fn an_oversized_meta_is_refused_with_meta_too_large() {
    let server = start(Config {
        max_meta_size: 64,
        ..Config::default()
    })
    .await;
    let mut a = Client::user(&server, "a").await;
    let big = "x".repeat(100);
    a.send_json(json!(["1", "1", "room:m", "phx_join", {"meta": {"b": big}}]))
        .await;
    assert_eq!(
        a.recv_json().await,
        json!(["1", "1", "room:m", "phx_reply", {"status": "error", "response": {"reason": "meta too large"}}])
    );
    let ja = a.join("room:m", json!({})).await;
    a.sync().await;
    let r = a.push(&ja, "room:m", "track", json!({"b": big})).await;
    assert_eq!(
        a.recv_json().await,
        json!([ja, r, "room:m", "phx_reply", {"status": "error", "response": {"reason": "meta too large"}}])
    );
}

#[tokio::test]
async fn the_presence_key_is_anonymous_without_user_id() {
    let server = start_default().await;
    let mut a = Client::connect(&server, "vsn=2.0.0").await;
    a.join("room:anon", json!({})).await;
    let diff = a.recv_until(is_diff).await;
    let key = keys(&diff[4]["joins"]).remove(0);
    assert!(key.starts_with("anon-"), "{key}");
}

#[tokio::test]
async fn a_broadcast_is_encoded_once_per_serializer_and_shared() {
    let server = start_default().await;
    let mut sender = Client::user(&server, "s").await;
    let mut v2a = Client::user(&server, "a").await;
    let mut v2b = Client::user(&server, "b").await;
    let mut v1 = Client::connect(&server, "vsn=1.0.0&user_id=c").await;
    let js = sender.join("room:f", json!({"track": false})).await;
    v2a.join("room:f", json!({"track": false})).await;
    v2b.join("room:f", json!({"track": false})).await;
    v1.send_json(
        json!({"topic": "room:f", "event": "phx_join", "payload": {"track": false}, "ref": "1"}),
    )
    .await;
    v1.recv_until(|v| v["event"] == "presence_state").await;
    for c in [&mut sender, &mut v2a, &mut v2b] {
        c.sync().await;
    }
    let before = server.tracker.frames_encoded();
    sender.push(&js, "room:f", "hello", json!({"x": 1})).await;
    let a = v2a.recv_json().await;
    let b = v2b.recv_json().await;
    let c = v1.recv_until(|v| v["event"] == "hello").await;
    assert_eq!(a, b);
    assert_eq!(c["payload"], json!({"x": 1}));
    assert_eq!(
        server.tracker.frames_encoded() - before,
        2,
        "one V2 and one V1 encoding"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_seen_leaving() {
    let server = start(Config {
        max_queued_bytes: 256 * 1024,
        ..Config::default()
    })
    .await;
    let mut sender = Client::user(&server, "sender").await;
    let mut slow = Client::user(&server, "slow").await;
    let js = sender.join("room:slow", json!({})).await;
    sender.sync().await;
    slow.join("room:slow", json!({})).await;
    slow.sync().await;
    sender.recv_until(is_diff).await; // slow's join
                                      // `slow` reads nothing from here on; its TCP buffers and then its queue fill up.
    let big = "x".repeat(64 * 1024);
    let flood = async {
        loop {
            for _ in 0..20 {
                sender
                    .push(&js, "room:slow", "flood", json!({"b": big}))
                    .await;
            }
            for frame in sender.sync().await {
                if is_diff(&frame) && keys(&frame[4]["leaves"]) == vec!["slow"] {
                    return frame;
                }
            }
        }
    };
    let left = tokio::time::timeout(std::time::Duration::from_secs(60), flood)
        .await
        .expect("the slow client is closed before the deadline");
    assert_eq!(left[4]["joins"], json!({}));
}
