//! Presence from server code: `Presence::track` (a presence that is not a socket, untracked
//! when its handle drops), `update`, `list`, `get_by_key`, and `subscribe` to cluster-wide
//! joins and leaves in order — in one process, and across a real `rollcall` process and an
//! embedded node meshed together.

use crate::support::cluster::{serial, Embedded, Node, User, FAST_TIMING};
use crate::support::server::{keys, start_default, Client, DEADLINE};
use rollcall_server::presence::{PresenceChange, Subscription};
use serde_json::{json, Value};

fn is_diff(v: &Value) -> bool {
    v[3] == "presence_diff"
}

/// The next change of `sub`, within the deadline.
async fn next(sub: &mut Subscription) -> PresenceChange {
    tokio::time::timeout(DEADLINE, sub.recv())
        .await
        .expect("a change before the deadline")
        .expect("the subscription is live")
}

/// `(topic, "+key" | "-key")` per entry of a change, joins first.
fn summary(change: &PresenceChange) -> Vec<String> {
    let joins = change
        .joins
        .iter()
        .map(|e| format!("{} +{}", change.topic, e.key));
    let leaves = change
        .leaves
        .iter()
        .map(|e| format!("{} -{}", change.topic, e.key));
    joins.chain(leaves).collect()
}

#[tokio::test]
async fn a_server_side_presence_is_listed_diffed_updated_and_gone_when_its_handle_drops() {
    let server = start_default().await;
    let mut c = Client::user(&server, "watcher").await;
    c.join("room:lobby", json!({"track": false})).await;
    c.sync().await;

    let bot = server
        .presence
        .track("room:lobby", "bot", json!({"kind": "bot"}))
        .unwrap();
    let diff = c.recv_until(is_diff).await;
    let meta = &diff[4]["joins"]["bot"]["metas"][0];
    assert_eq!(meta["kind"], "bot");
    assert_eq!(meta["node"], server.tracker.node());
    let first_ref = meta["phx_ref"].clone();

    let got = server
        .presence
        .get_by_key("room:lobby", "bot")
        .await
        .unwrap();
    assert_eq!(got["metas"][0]["phx_ref"], first_ref);
    assert_eq!(
        server.presence.get_by_key("room:lobby", "nobody").await,
        None
    );
    assert_eq!(keys(&server.presence.list("room:lobby").await), vec!["bot"]);

    bot.update(json!({"kind": "bot", "busy": true})).unwrap();
    let diff = c.recv_until(is_diff).await;
    assert_eq!(diff[4]["leaves"]["bot"]["metas"][0]["phx_ref"], first_ref);
    let new = &diff[4]["joins"]["bot"]["metas"][0];
    assert_eq!(new["busy"], true);
    assert_eq!(new["phx_ref_prev"], first_ref);

    drop(bot);
    let diff = c.recv_until(is_diff).await;
    assert_eq!(keys(&diff[4]["leaves"]), vec!["bot"]);
    assert_eq!(server.presence.list("room:lobby").await, json!({}));
}

#[tokio::test]
async fn a_presence_held_by_a_task_leaves_when_the_task_ends() {
    let server = start_default().await;
    let presence = server.presence.clone();
    let job = tokio::spawn(async move {
        let _handle = presence.track("room:jobs", "job-1", json!({})).unwrap();
        std::future::pending::<()>().await;
    });
    let mut sub = server.presence.subscribe("room:jobs");
    let change = next(&mut sub).await;
    assert_eq!(summary(&change), vec!["room:jobs +job-1"]);
    job.abort();
    let change = next(&mut sub).await;
    assert_eq!(summary(&change), vec!["room:jobs -job-1"]);
}

#[tokio::test]
async fn a_meta_that_is_not_an_object_is_refused() {
    let server = start_default().await;
    assert!(server.presence.track("room:x", "k", json!([1])).is_err());
    let handle = server.presence.track("room:x", "k", json!({})).unwrap();
    assert!(handle.update(json!("text")).is_err());
}

#[tokio::test]
async fn subscribe_hears_joins_and_leaves_of_matching_topics_in_order() {
    let server = start_default().await;
    let mut rooms = server.presence.subscribe("room:*");
    let mut lobby = server.presence.subscribe("room:lobby");
    let mut a = Client::user(&server, "a").await;
    let mut b = Client::user(&server, "b").await;
    a.join("room:lobby", json!({"meta": {"n": 1}})).await;
    b.join("room:other", json!({})).await;
    let other = server.presence.track("elsewhere", "x", json!({})).unwrap();
    b.send_json(json!(["1", "9", "room:other", "phx_leave", {}]))
        .await;
    a.push("1", "room:lobby", "track", json!({"n": 2})).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(summary(&next(&mut rooms).await));
    }
    assert_eq!(
        seen,
        vec![
            "room:lobby +a",
            "room:other +b",
            "room:other -b",
            // An update: the new meta joins, the old one leaves, in one change.
            "room:lobby +a",
            "room:lobby -a",
        ]
    );
    let first = next(&mut lobby).await;
    assert_eq!(first.joins[0].meta["n"], 1);
    assert!(first.joins[0].meta["phx_ref"].is_string());
    let update = next(&mut lobby).await;
    assert_eq!(update.joins[0].meta["n"], 2);
    assert_eq!(update.leaves[0].meta["n"], 1);
    drop(other);
}

#[tokio::test]
async fn a_subscription_that_falls_behind_is_ended_and_says_so() {
    let server = start_default().await;
    let mut sub = server.presence.subscribe_with_capacity("room:*", 2);
    let handles: Vec<_> = (0..10)
        .map(|i| {
            server
                .presence
                .track("room:busy", &format!("k{i}"), json!({}))
                .unwrap()
        })
        .collect();
    let mut received = 0;
    while tokio::time::timeout(DEADLINE, sub.recv())
        .await
        .expect("ends before the deadline")
        .is_some()
    {
        received += 1;
    }
    assert!(received < 10, "{received}");
    assert!(sub.lagged());
    // The node is unaffected.
    assert_eq!(keys(&server.presence.list("room:busy").await).len(), 10);
    drop(handles);
}

/// A real `rollcall` process and an embedded node meshed together, each seeing the other up.
async fn process_and_embedded() -> (Node, Embedded) {
    let process = Node::mesh("proc", &[], &FAST_TIMING).await;
    let embedded = Embedded::start("embedded", &[&process], |b| b).await;
    process.wait_replicas_up(&["embedded"]).await;
    embedded.wait_replicas_up(&["proc"]).await;
    (process, embedded)
}

/// Waits until the embedded node lists exactly `keys` in `topic`.
async fn until_listed(embedded: &Embedded, topic: &str, keys: &[&str]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let list = embedded.presence.list(topic).await;
        if crate::support::server::keys(&list) == keys {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}: {list} is not {keys:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_server_side_presence_is_seen_on_another_node_and_leaves_when_its_handle_drops() {
    let _serial = serial().await;
    let (process, embedded) = process_and_embedded().await;
    let watcher = User::observe(&process, "watcher", "room:lobby").await;
    let bot = embedded
        .presence
        .track("room:lobby", "bot", json!({"kind": "bot"}))
        .unwrap();
    let view = watcher.wait_keys(&["bot"]).await;
    let meta = &view.presence["bot"][0];
    assert_eq!(meta["kind"], "bot");
    assert_eq!(meta["node"], "embedded");
    drop(bot);
    watcher.wait_keys(&[]).await;
}

#[tokio::test]
async fn subscribe_hears_another_nodes_joins_and_leaves_in_order() {
    let _serial = serial().await;
    let (process, embedded) = process_and_embedded().await;
    let mut sub = embedded.presence.subscribe("room:*");
    // Each step waits until the other node shows it: a join and a leave that reach a node in
    // one replication message cancel out there (diffs are net), so the steps are kept apart.
    let topic = "room:order";
    let mut u1 = User::join(&process, "u1", topic, json!({})).await;
    until_listed(&embedded, topic, &["u1"]).await;
    let u2 = User::join(&process, "u2", topic, json!({})).await;
    until_listed(&embedded, topic, &["u1", "u2"]).await;
    u1.leave();
    until_listed(&embedded, topic, &["u2"]).await;
    let _u3 = User::join(&process, "u3", topic, json!({})).await;
    until_listed(&embedded, topic, &["u2", "u3"]).await;
    u2.close();
    until_listed(&embedded, topic, &["u3"]).await;

    let mut seen = Vec::new();
    while seen.len() < 5 {
        for entry in summary(&next(&mut sub).await) {
            seen.push(entry);
        }
    }
    assert_eq!(
        seen,
        vec![
            "room:order +u1",
            "room:order +u2",
            "room:order -u1",
            "room:order +u3",
            "room:order -u2",
        ]
    );
}
