//! The replication test over a broker: three real `rollcall` processes on one `nats-server` or
//! `redis-server` (started by the test on a free loopback port) share members, meta updates and
//! relayed events; a node split off and healed converges; a crashed node's members leave.

mod cluster_support;

use cluster_support::{serial, Broker, BrokerKind, Node, User, FAST_TIMING};
use serde_json::json;

const ROOM: &str = "room:lobby";

async fn replication_over(kind: BrokerKind) {
    let _serial = serial().await;
    let broker = Broker::start(kind).await;
    let mut args = broker.flags();
    args.extend(FAST_TIMING.iter().map(|s| s.to_string()));
    let a = Node::start("a", &args).await;
    let b = Node::start("b", &args).await;
    let c = Node::start("c", &args).await;
    let mut ua = User::join(&a, "ua", ROOM, json!({})).await;
    let ub = User::join(&b, "ub", ROOM, json!({})).await;
    let uc = User::join(&c, "uc", ROOM, json!({})).await;
    for u in [&ua, &ub, &uc] {
        u.wait_keys(&["ua", "ub", "uc"]).await;
    }

    ua.push("track", json!({"status": "away"}));
    for u in [&ub, &uc] {
        u.wait_for("ua away", |v| {
            v.presence
                .get("ua")
                .is_some_and(|m| m.len() == 1 && m[0]["status"] == json!("away"))
        })
        .await;
    }
    ua.push("shout", json!({"body": "hi"}));
    for u in [&ub, &uc] {
        u.wait_for("a's shout", |v| v.events.iter().any(|(e, _)| e == "shout"))
            .await;
    }

    // Split c off and heal: each side sees the other leave, then everyone converges.
    c.partition("a", true).await;
    c.partition("b", true).await;
    for u in [&ua, &ub] {
        u.wait_keys(&["ua", "ub"]).await;
    }
    uc.wait_keys(&["uc"]).await;
    c.partition("a", false).await;
    c.partition("b", false).await;
    for u in [&ua, &ub, &uc] {
        u.wait_keys(&["ua", "ub", "uc"]).await;
    }
    let refs = ua.view().refs();
    for u in [&ub, &uc] {
        u.wait_for("the same presences as ua", |v| v.refs() == refs)
            .await;
    }

    c.kill9().await;
    for u in [&ua, &ub] {
        u.wait_keys(&["ua", "ub"]).await;
    }
    let health = a.healthz().await;
    assert_eq!(health["node"], json!("a"));
    assert!(
        health["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == json!("b") && p["up"] == json!(true)),
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_nats_share_members_updates_relays_and_heal() {
    replication_over(BrokerKind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_redis_share_members_updates_relays_and_heal() {
    replication_over(BrokerKind::Redis).await;
}
