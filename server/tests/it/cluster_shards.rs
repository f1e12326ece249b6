//! Real `rollcall` processes running several tracker shards each: rooms hashed over the shards
//! replicate shard by shard through `kill -9`, a partition and its healing, and a node whose pool
//! size differs is refused with a reason in `/healthz`.

use std::collections::BTreeSet;

use rollcall_server::tracker::shard_index;
use serde_json::json;

use crate::support::cluster::{serial, Node, User, FAST_TIMING};

const SHARDS: usize = 4;

/// Rooms that land on at least three different shards of a pool of [`SHARDS`].
fn rooms() -> Vec<String> {
    let rooms: Vec<String> = (0..6).map(|i| format!("room:r{i}")).collect();
    let shards: BTreeSet<usize> = rooms.iter().map(|r| shard_index(r, SHARDS)).collect();
    assert!(shards.len() >= 3, "rooms on shards {shards:?}");
    rooms
}

fn timing_with_shards(shards: usize) -> Vec<String> {
    let mut args: Vec<String> = FAST_TIMING.iter().map(|s| s.to_string()).collect();
    args.push("--tracker-shards".into());
    args.push(shards.to_string());
    args
}

async fn mesh(name: &str, peers: &[&Node], shards: usize) -> Node {
    let timing = timing_with_shards(shards);
    let timing: Vec<&str> = timing.iter().map(String::as_str).collect();
    Node::mesh(name, peers, &timing).await
}

/// One member per node in `room`, keyed `<node>-<room>`.
async fn members(nodes: &[&Node], room: &str) -> Vec<User> {
    let mut users = Vec::new();
    for node in nodes {
        users.push(User::join(node, &format!("{}-{room}", node.name), room, json!({})).await);
    }
    users
}

async fn wait_all(users: &[User], keys: &[String]) {
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    for u in users {
        u.wait_keys(&keys).await;
    }
}

fn keys(nodes: &[&str], room: &str) -> Vec<String> {
    nodes.iter().map(|n| format!("{n}-{room}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_several_shards_per_node_replicate_through_kill_9_and_a_partition() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = serial().await;
    let a = mesh("a", &[], SHARDS).await;
    let b = mesh("b", &[&a], SHARDS).await;
    let c = mesh("c", &[&a], SHARDS).await;
    let rooms = rooms();
    let mut by_room = Vec::new();
    for room in &rooms {
        let users = members(&[&a, &b, &c], room).await;
        by_room.push(users);
    }
    for (room, users) in rooms.iter().zip(&by_room) {
        wait_all(users, &keys(&["a", "b", "c"], room)).await;
    }

    // c dies without a word: every shard of a and b drops its members.
    c.kill9().await;
    for (room, users) in rooms.iter().zip(&by_room) {
        wait_all(&users[..2], &keys(&["a", "b"], room)).await;
    }

    // a and b split: each side sees the other leave, and keeps changing.
    b.partition("a", true).await;
    for (room, users) in rooms.iter().zip(&by_room) {
        users[0].wait_keys(&[&format!("a-{room}")]).await;
        users[1].wait_keys(&[&format!("b-{room}")]).await;
    }
    let mut late = Vec::new();
    for room in &rooms {
        late.push(User::join(&a, &format!("a2-{room}"), room, json!({})).await);
        late.push(User::join(&b, &format!("b2-{room}"), room, json!({})).await);
    }

    // Healed, every room converges on both nodes, with the same refs.
    b.partition("a", false).await;
    for (i, room) in rooms.iter().enumerate() {
        let all = keys(&["a", "b", "a2", "b2"], room);
        let mut users: Vec<&User> = by_room[i][..2].iter().collect();
        users.extend(&late[2 * i..2 * i + 2]);
        for u in &users {
            let keys: Vec<&str> = all.iter().map(String::as_str).collect();
            u.wait_keys(&keys).await;
        }
        let refs = users[0].view().refs();
        for u in &users[1..] {
            u.wait_for("the same presences on both nodes", |v| v.refs() == refs)
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_pool_size_is_refused_with_a_reason_in_healthz() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = serial().await;
    let a = mesh("a", &[], 2).await;
    let b = mesh("b", &[&a], 3).await;
    let ua = User::join(&a, "ua", "room:lobby", json!({})).await;
    ua.wait_keys(&["ua"]).await;
    // b's /healthz says why it does not replicate with a.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let health = b.healthz().await;
        let refused = health["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "a")
            .and_then(|p| p["refused"].as_str().map(str::to_string));
        if let Some(reason) = refused {
            assert!(reason.contains("runs 2 tracker shards"), "{reason}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's /healthz never refused a: {health}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
