//! The cluster as an attacker sees it: a peer relays reserved event names. No client may ever
//! see any of it, and the refusals are counted.

use std::time::Duration;

use bytes::Bytes;
use rollcall_server::tracker::relay;
use serde_json::json;

use crate::support::cluster::DEADLINE;

const ROOM: &str = "room:lobby";
const SECRET: &str = "a-cluster-secret-for-the-tests";

/// A peer (any node with the secret, or an older version of rollcall) relays reserved event
/// names: the node delivers none of them, and counts them.
#[tokio::test]
async fn reserved_event_names_relayed_by_a_peer_are_refused() {
    use crate::support::server::Client;
    use rollcall_server::pubsub::{connect, ClusterConfig, MeshConfig};
    use rollcall_server::{Config, Server};

    let pubsub = connect(
        "a",
        ClusterConfig::Mesh(MeshConfig::new("127.0.0.1:0", vec![], SECRET)),
    )
    .await
    .expect("a");
    let cluster_addr = pubsub.cluster_addr().expect("listens").to_string();
    let server = Server::builder(Config::default())
        .pubsub(pubsub.clone())
        .build();
    let tracker = server.tracker().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = listener.local_addr().expect("addr");
    tokio::spawn(server.serve(listener, std::future::pending()));
    let peer = connect(
        "peer",
        ClusterConfig::Mesh(MeshConfig::new("127.0.0.1:0", vec![cluster_addr], SECRET)),
    )
    .await
    .expect("peer");
    let met = tokio::time::timeout(DEADLINE, async {
        while !tracker
            .pubsub()
            .peers()
            .iter()
            .any(|p| p.name == "peer" && p.up)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(met.is_ok(), "a and the peer prove themselves to each other");
    let mut alice = Client::user_at(http, "alice").await;
    alice.join(ROOM, json!({})).await;
    alice.sync().await;

    let relayed = |event: &str| {
        let payload =
            rollcall_core::protocol::Payload::Json(json!({"status": "ok", "response": {}}));
        Bytes::from(relay::encode(ROOM, event, &payload).expect("relay"))
    };
    for event in [
        "phx_reply",
        "chan_reply_1",
        "presence_diff",
        "presence_state",
        "phx_close",
    ] {
        peer.broadcast("relay", relayed(event));
    }
    peer.broadcast("relay", relayed("shout"));
    let first = alice.recv_json().await;
    assert_eq!(first[3], "shout", "the first event alice gets: {first}");
    let (_, _, metrics) = crate::support::server::http(http, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains("rollcall_relayed_events_refused_total 5\n"),
        "{metrics}"
    );
    assert!(metrics.contains("rollcall_relayed_events_received_total 1\n"));
    drop(peer);
}
