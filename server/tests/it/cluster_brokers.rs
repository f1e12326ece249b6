//! The replication test over a broker: three real `rollcall` processes on one `nats-server` or
//! `redis-server` (started by the test on a free loopback port) share members, meta updates and
//! relayed events; a node split off and healed converges; a crashed node's members leave.

use crate::support::cluster::{serial, Broker, BrokerKind, Node, User, FAST_TIMING};
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
    let _watchdog = crate::support::watchdog::start();
    replication_over(BrokerKind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_redis_share_members_updates_relays_and_heal() {
    let _watchdog = crate::support::watchdog::start();
    replication_over(BrokerKind::Redis).await;
}

/// A node that joins late must receive the whole state, here about 2 MB: twice what
/// nats-server accepts in one message. The transfer reaches it in parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_receives_a_state_larger_than_a_nats_message() {
    let _watchdog = crate::support::watchdog::start();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    const TOPICS: usize = 4000;
    let _serial = serial().await;
    let broker = Broker::start(BrokerKind::Nats).await;
    let mut args = broker.flags();
    args.extend(FAST_TIMING.iter().map(|s| s.to_string()));
    let mut bulk_args = args.clone();
    bulk_args.extend(["--max-channels", "5000", "--event-rate", "0"].map(String::from));
    let a = Node::start("a", &bulk_args).await;

    // One connection present in 4,000 rooms with an 800-byte meta in each.
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0&user_id=bulk", a.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let pad = "x".repeat(800);
    for i in 0..TOPICS {
        let join = json!([i.to_string(), i.to_string(), format!("room:bulk-{i}"), "phx_join",
            {"meta": {"pad": pad}}]);
        ws.feed(Message::text(join.to_string()))
            .await
            .expect("send");
    }
    ws.flush().await.expect("flush");
    let mut ok = 0;
    tokio::time::timeout(crate::support::cluster::DEADLINE * 2, async {
        while ok < TOPICS {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("the bulk connection closed");
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
            if v[3] == "phx_reply" && v[4]["status"] == "ok" {
                ok += 1;
            }
        }
    })
    .await
    .expect("every join is answered");

    let b = Node::start("b", &args).await;
    let last = format!("room:bulk-{}", TOPICS - 1);
    let probe = User::join(&b, "probe", &last, json!({})).await;
    probe.wait_keys(&["bulk", "probe"]).await;
    // The first rooms joined are in no recent delta: only the transfer carries them.
    let first = User::join(&b, "probe", "room:bulk-0", json!({})).await;
    first.wait_keys(&["bulk", "probe"]).await;
    drop(ws);
}
