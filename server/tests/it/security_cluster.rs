//! The cluster as an attacker sees it, with real `rollcall` processes: someone who can publish on
//! the broker (a plain Redis or NATS client on the cluster's channels) forges and replays
//! messages, a node running with the wrong secret tries to list its member, a stranger connects
//! to the mesh port, and a peer relays reserved event names. No client may ever see any of it,
//! the refusals are counted, and the log stays short.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use rollcall_server::tracker::relay;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::broker::SECRET;
use crate::support::cluster::{serial, Broker, BrokerKind, Node, User, DEADLINE, FAST_TIMING};
use crate::support::mesh as raw;

const ROOM: &str = "room:lobby";

/// A plain client of the broker, as an attacker (or a curious operator) would use: it records
/// everything published on the cluster's channels and publishes whatever it likes there.
struct Intruder {
    publish: Publisher,
    recorded: Arc<Mutex<Vec<(String, Bytes)>>>,
    all: String,
}

enum Publisher {
    Nats(async_nats::Client),
    Redis(redis::aio::MultiplexedConnection),
}

impl Intruder {
    async fn connect(broker: &Broker) -> Intruder {
        let cluster = broker.cluster_name();
        let recorded: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let keep = recorded.clone();
        let publish = match broker.kind {
            BrokerKind::Nats => {
                let client = async_nats::connect(broker.url()).await.expect("nats");
                let mut everything = client
                    .subscribe(format!("rollcall.{cluster}.>"))
                    .await
                    .expect("subscribe");
                client.flush().await.expect("flush");
                tokio::spawn(async move {
                    while let Some(m) = everything.next().await {
                        let entry = (m.subject.to_string(), m.payload);
                        keep.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
                    }
                });
                Publisher::Nats(client)
            }
            BrokerKind::Redis => {
                let client = redis::Client::open(broker.url()).expect("redis url");
                let mut pubsub = client.get_async_pubsub().await.expect("redis");
                pubsub
                    .psubscribe(format!("rollcall.{cluster}.*"))
                    .await
                    .expect("psubscribe");
                let mut messages = pubsub.into_on_message();
                tokio::spawn(async move {
                    while let Some(m) = messages.next().await {
                        let entry = (
                            m.get_channel_name().to_string(),
                            Bytes::copy_from_slice(m.get_payload_bytes()),
                        );
                        keep.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
                    }
                });
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis");
                Publisher::Redis(conn)
            }
        };
        Intruder {
            publish,
            recorded,
            all: format!("rollcall.{cluster}.all"),
        }
    }

    async fn publish(&mut self, subject: &str, message: Bytes) {
        match &mut self.publish {
            Publisher::Nats(client) => {
                client
                    .publish(subject.to_owned(), message)
                    .await
                    .expect("publish");
                client.flush().await.expect("flush");
            }
            Publisher::Redis(conn) => {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(subject)
                    .arg(message.as_ref())
                    .query_async(conn)
                    .await
                    .expect("publish");
            }
        }
    }

    /// Everything recorded so far: (subject, bytes).
    fn recorded(&self) -> Vec<(String, Bytes)> {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The broker header every node puts in front of its messages: version, sender, channel.
fn broker_message(from: &str, channel: &str, payload: &[u8]) -> Bytes {
    let mut out = vec![1, from.len() as u8];
    out.extend_from_slice(from.as_bytes());
    out.push(channel.len() as u8);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// The sender and channel of a recorded broker message.
fn sender_and_channel(message: &[u8]) -> (String, String) {
    let from_len = usize::from(message[1]);
    let from = String::from_utf8_lossy(&message[2..2 + from_len]).to_string();
    let ch_len = usize::from(message[2 + from_len]);
    let channel = String::from_utf8_lossy(&message[3 + from_len..3 + from_len + ch_len]);
    (from, channel.to_string())
}

/// A relayed `event` in the layout nodes used before messages were signed: a whole (unsplit)
/// cluster message carrying the relay.
fn unsigned_relay(event: &str, payload: Value) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend(
        relay::encode(
            ROOM,
            event,
            &rollcall_core::protocol::Payload::Json(payload),
        )
        .expect("relay"),
    );
    out
}

/// `body` in the signed layout, but with a tag made with a guessed key.
fn wrongly_signed(from: &str, channel: &str, body: &[u8]) -> Vec<u8> {
    let mut header = vec![1u8, 0];
    header.extend_from_slice(&7u64.to_be_bytes());
    header.extend_from_slice(&u64::MAX.to_be_bytes());
    header.push(0);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"a guess").expect("key");
    for part in [from.as_bytes(), channel.as_bytes(), &header, body] {
        mac.update(part);
    }
    let mut out = header;
    out.extend_from_slice(&mac.finalize().into_bytes());
    out.extend_from_slice(body);
    out
}

fn events(user: &User) -> Vec<(String, Value)> {
    user.view().events
}

/// Fails if `user` ever listed a key other than `allowed`.
fn assert_only_ever_listed(user: &User, allowed: &[&str]) {
    let view = user.view();
    for key in view.presence.keys().chain(view.left.iter()) {
        assert!(
            allowed.contains(&key.as_str()),
            "{} saw {key}: {view:#?}",
            user.key
        );
    }
}

const REJECTED: &str = "rollcall_pubsub_messages_rejected_total";

async fn rejected(node: &Node, reason: &str) -> u64 {
    node.metric(&format!("{REJECTED}{{reason=\"{reason}\"}}"))
        .await
}

/// Waits until `node` counts at least `n` messages refused for `reason`.
async fn wait_rejected(node: &Node, reason: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = rejected(node, reason).await;
        if got >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {got} messages refused as {reason}, waiting for {n}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refusal_lines(node: &Node, what: &str) -> usize {
    node.log_lines().iter().filter(|l| l.contains(what)).count()
}

async fn forged_and_replayed_messages_never_reach_a_client(kind: BrokerKind) {
    let _serial = serial().await;
    let broker = Broker::start(kind).await;
    let mut intruder = Intruder::connect(&broker).await;
    let mut args = broker.flags();
    args.extend(FAST_TIMING.iter().map(|s| s.to_string()));
    let started = tokio::time::Instant::now();
    let a = Node::start("a", &args).await;
    let mut b = Node::start("b", &args).await;
    let mut ua = User::join(&a, "ua", ROOM, json!({})).await;
    let ub = User::join(&b, "ub", ROOM, json!({})).await;
    for u in [&ua, &ub] {
        u.wait_keys(&["ua", "ub"]).await;
    }
    ua.push("shout", json!({"n": 1}));
    ub.wait_for("the shout", |v| !v.events.is_empty()).await;
    // What a and b published so far, the shout included, as the intruder recorded it. The
    // intruder is another subscriber of the broker: it may get the shout after ub did.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (recorded, shout) = loop {
        let recorded = intruder.recorded();
        let shout = recorded
            .iter()
            .rfind(|(_, m)| sender_and_channel(m) == ("a".into(), "relay".into()))
            .cloned();
        if let Some(shout) = shout {
            break (recorded, shout);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shout was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // A node with the wrong secret on the same channels: its member must never be listed.
    let mut wrong = args.clone();
    let at = wrong
        .iter()
        .position(|a| a == SECRET)
        .expect("the secret flag");
    wrong[at] = "not-the-secret".into();
    let mallory_node = Node::start("mallory", &wrong).await;
    let _mallory = User::join(&mallory_node, "mallory", ROOM, json!({})).await;

    // Forged relays: the unsigned layout, and the signed one with a guessed key, each as if
    // from a.
    let all = intruder.all.clone();
    for i in 0..200 {
        let forged = unsigned_relay("shout", json!({"forged": "unsigned", "i": i}));
        intruder
            .publish(&all, broker_message("a", "relay", &forged))
            .await;
    }
    let body = unsigned_relay("shout", json!({"forged": "guessed key"}));
    let guessed = wrongly_signed("a", "relay", &body);
    intruder
        .publish(&all, broker_message("a", "relay", &guessed))
        .await;
    // Replays: everything a and b had published, twice.
    for _ in 0..2 {
        for (subject, message) in &recorded {
            intruder.publish(subject, message.clone()).await;
        }
    }
    // After all that (published before it, on the same channel), the next thing ub hears is
    // ua's marker.
    ua.push("marker", json!({"n": 2}));
    let view = ub
        .wait_for("the marker", |v| {
            v.events.iter().any(|(e, _)| e == "marker")
        })
        .await;
    assert_eq!(
        view.events,
        vec![
            ("shout".to_string(), json!({"n": 1})),
            ("marker".to_string(), json!({"n": 2}))
        ]
    );
    wait_rejected(&b, "unsigned", 200).await;
    wait_rejected(&b, "bad_signature", 2).await;
    wait_rejected(&b, "replayed", 2).await;
    assert_only_ever_listed(&ub, &["ua", "ub"]);
    assert_only_ever_listed(&ua, &["ua", "ub"]);
    // Hundreds of refusals, a few log lines: the first at once, then a summary per interval
    // (10 s).
    let lines = refusal_lines(&b, "refused cluster messages");
    let bound = 2 + started.elapsed().as_secs() / 10;
    assert!(
        (1..=bound as usize).contains(&lines),
        "{lines} lines in {:?}: {:#?}",
        started.elapsed(),
        b.log_lines()
    );

    // A restarted node has no memory of what it received: a replay must still be refused.
    b.sigterm();
    assert!(b.wait_exit().await);
    let b = Node::start("b", &args).await;
    let ub = User::join(&b, "ub", ROOM, json!({})).await;
    ub.wait_keys(&["ua", "ub"]).await;
    ua.wait_keys(&["ua", "ub"]).await;
    for _ in 0..3 {
        intruder.publish(&shout.0, shout.1.clone()).await;
    }
    ua.push("marker", json!({"n": 3}));
    let view = ub
        .wait_for("the marker", |v| {
            v.events.iter().any(|(e, _)| e == "marker")
        })
        .await;
    assert_eq!(view.events, vec![("marker".to_string(), json!({"n": 3}))]);
    // Numbered before the proof b asked a for after its restart.
    assert!(rejected(&b, "unproven").await >= 3);
    assert_only_ever_listed(&ub, &["ua", "ub"]);
    assert_eq!(events(&ua), Vec::new(), "ua never hears its own events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_forged_and_replayed_messages_never_reach_a_client() {
    forged_and_replayed_messages_never_reach_a_client(BrokerKind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_forged_and_replayed_messages_never_reach_a_client() {
    forged_and_replayed_messages_never_reach_a_client(BrokerKind::Redis).await;
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
