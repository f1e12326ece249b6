//! The cluster as an attacker sees it, with real `rollcall` processes: a stranger connects to
//! the mesh port, and a peer relays reserved event names. No client may ever see any of it, the
//! refusals are counted, and the log stays short.

use std::time::Duration;

use bytes::Bytes;
use rollcall_server::tracker::relay;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::cluster::{serial, Node, DEADLINE, FAST_TIMING};
use crate::support::mesh as raw;

const ROOM: &str = "room:lobby";
const SECRET: &str = "a-cluster-secret-for-the-tests";

fn refusal_lines(node: &Node, what: &str) -> usize {
    node.log_lines().iter().filter(|l| l.contains(what)).count()
}

/// Everything the node at `addr` sends on a fresh connection after we send `ours` (frame
/// bodies), until it closes.
async fn what_a_stranger_hears(addr: &str, ours: &[Vec<u8>]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    for body in ours {
        raw::write_frame(&mut s, body).await;
    }
    let mut heard = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut heard))
        .await
        .expect("the node closes")
        .expect("readable");
    heard
}

/// The frame bodies in `bytes`.
fn frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        out.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_the_mesh_port_learns_nothing_and_a_connect_loop_logs_a_line_or_two() {
    let _serial = serial().await;
    let node = Node::mesh("zebra-node", &[], &FAST_TIMING).await;
    let addr = node.cluster_addr.clone().expect("mesh address");
    let port = addr.rsplit(':').next().unwrap_or_default().to_string();
    let nonce = [9u8; 32];

    // Garbage, a wrong proof, and silence-then-close: each hears one hello (a version and a
    // nonce) and at most a refusal, never the node's name, address or incarnation.
    let attempts = [
        vec![b"GET / HTTP/1.1".to_vec()],
        vec![
            raw::hello(&nonce),
            raw::auth("guess", b'D', &nonce, &[0u8; 32]),
        ],
        vec![raw::hello(&nonce)],
    ];
    for (i, ours) in attempts.iter().enumerate() {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        for body in ours {
            raw::write_frame(&mut s, body).await;
        }
        if i == 2 {
            // Say nothing more: the node waits for a proof, then gives up.
            drop(s);
            continue;
        }
        let mut heard = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut heard))
            .await
            .expect("the node closes")
            .expect("readable");
        let text = String::from_utf8_lossy(&heard);
        assert!(!text.contains("zebra"), "the name leaked: {text:?}");
        assert!(!text.contains(&port), "the address leaked: {text:?}");
        let frames = frames(&heard);
        assert_eq!(frames.len(), 2, "a hello and a refusal: {frames:?}");
        assert_eq!(frames[0].len(), 34, "kind, version, nonce");
        assert_eq!(frames[0][..2], [raw::HELLO, raw::VERSION]);
        assert_eq!(frames[1][0], raw::REJECT);
        let reason = String::from_utf8_lossy(&frames[1][3..]).to_string();
        assert!(
            ["protocol error", "authentication failed"].contains(&reason.as_str()),
            "{reason}"
        );
    }

    // A connect loop, each attempt with a wrong proof.
    let before = node.log_lines().len();
    let start = tokio::time::Instant::now();
    let mut attempts = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let heard = what_a_stranger_hears(
            &addr,
            &[
                raw::hello(&nonce),
                raw::auth("guess", b'D', &nonce, &[0u8; 32]),
            ],
        )
        .await;
        assert!(!String::from_utf8_lossy(&heard).contains("zebra"));
        attempts += 1;
    }
    assert!(attempts >= 50, "only {attempts} attempts in 2 s");
    let refused = node
        .metric("rollcall_pubsub_handshakes_refused_total")
        .await;
    assert!(
        refused >= attempts,
        "{refused} refusals counted for {attempts}"
    );
    let logged: Vec<String> = node.log_lines().split_off(before);
    let about_refusals = logged
        .iter()
        .filter(|l| l.contains("refused cluster connections"))
        .count();
    assert!(
        about_refusals <= 2 && logged.len() <= 4,
        "{attempts} refused connections logged {} lines: {logged:#?}",
        logged.len()
    );
    assert!(
        refusal_lines(&node, "refused cluster connections") >= 1,
        "the first refusal is logged: {:#?}",
        node.log_lines()
    );
}

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
