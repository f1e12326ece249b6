//! Long-poll behind a load balancer without sticky sessions: two in-process nodes joined by the
//! mesh on 127.0.0.1; a session's requests may reach either node and are relayed to the node
//! that owns it.

use std::sync::Arc;
use std::time::Duration;

use crate::support::server::{http, Client, DEADLINE};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rollcall_server::pubsub::{Mesh, MeshConfig, PubSub};
use rollcall_server::{Config, Server};
use serde_json::{json, Value};

struct Node {
    addr: std::net::SocketAddr,
    mesh: Arc<Mesh>,
}

async fn node(name: &str, peers: &[String], window: Duration) -> Node {
    let mut mesh = MeshConfig::new(
        "127.0.0.1:0",
        peers.to_vec(),
        crate::support::broker::SECRET,
    );
    mesh.ping_interval = Duration::from_millis(200);
    mesh.backoff_min = Duration::from_millis(20);
    mesh.backoff_max = Duration::from_millis(200);
    let mesh = Arc::new(Mesh::start(name, mesh).await.expect("mesh starts"));
    let config = Config {
        longpoll_window: window,
        ..Config::default()
    };
    let server = Server::builder(config).pubsub(mesh.clone()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    Node { addr, mesh }
}

/// Two meshed nodes, each seeing the other up.
async fn pair(window: Duration) -> (Node, Node) {
    let a = node("a", &[], window).await;
    let b = node("b", &[a.mesh.local_addr().to_string()], window).await;
    tokio::time::timeout(DEADLINE, async {
        while !(up(&a.mesh, "b") && up(&b.mesh, "a")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the nodes meet");
    (a, b)
}

fn up(mesh: &Mesh, peer: &str) -> bool {
    mesh.peers().iter().any(|p| p.name == peer && p.up)
}

async fn get(node: &Node, query: &str) -> Value {
    let (status, _, body) = http(
        node.addr,
        "GET",
        &format!("/socket/longpoll?{query}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON answer")
}

async fn post(node: &Node, token: &str, lines: &[Value]) -> Value {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let path = format!("/socket/longpoll?vsn=2.0.0&token={token}");
    let headers = [("content-type", "application/x-ndjson")];
    let (status, _, body) = http(node.addr, "POST", &path, &headers, body.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON answer")
}

/// Opens a session on `node`; returns its token.
async fn open(node: &Node, user: &str) -> String {
    let answer = get(node, &format!("vsn=2.0.0&user_id={user}")).await;
    assert_eq!(answer["status"], 410);
    answer["token"].as_str().expect("a token").to_string()
}

/// A long-poll client whose requests go round-robin to `nodes`, as a load balancer without
/// sticky sessions would send them. Frames received but not yet awaited are kept.
struct Session<'a> {
    nodes: Vec<&'a Node>,
    token: String,
    next: usize,
    received: std::collections::VecDeque<Value>,
}

impl<'a> Session<'a> {
    fn new(nodes: &[&'a Node], token: String) -> Self {
        Session {
            nodes: nodes.to_vec(),
            token,
            next: 0,
            received: Default::default(),
        }
    }

    fn node(&mut self) -> &'a Node {
        self.next += 1;
        self.nodes[self.next % self.nodes.len()]
    }

    async fn send(&mut self, frame: Value) {
        let node = self.node();
        assert_eq!(post(node, &self.token, &[frame]).await["status"], 200);
    }

    /// Polls until a frame matches `pred`; returns it.
    async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let query = format!("vsn=2.0.0&token={}", self.token);
        tokio::time::timeout(DEADLINE * 2, async {
            loop {
                while let Some(frame) = self.received.pop_front() {
                    if pred(&frame) {
                        return frame;
                    }
                }
                let node = self.node();
                let answer = get(node, &query).await;
                assert!(
                    answer["status"] == 200 || answer["status"] == 204,
                    "the session is alive: {answer}"
                );
                assert_eq!(
                    answer["token"],
                    self.token.as_str(),
                    "the same session answers"
                );
                for m in answer["messages"].as_array().into_iter().flatten() {
                    let text = m.as_str().unwrap_or("null");
                    self.received.push_back(serde_json::from_str(text).unwrap());
                }
            }
        })
        .await
        .expect("the awaited frame arrives")
    }
}

#[tokio::test]
async fn a_session_opened_on_one_node_is_served_by_any_node() {
    let (a, b) = pair(Duration::from_millis(500)).await;
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0&user_id=watcher", a.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut observer = Client::from_ws(ws);
    observer.join("room:lobby", json!({"track": false})).await;

    let token = open(&b, "carol").await;
    // The session (and so the member) lives on node b; its requests alternate between a and b.
    let mut carol = Session::new(&[&a, &b], token);
    carol
        .send(json!(["1", "1", "room:lobby", "phx_join", {"meta": {"device": "lp"}}]))
        .await;
    let reply = carol.recv_until(|f| f[3] == "phx_reply").await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    carol
        .recv_until(|f| f[3] == "presence_diff" && f[4]["joins"].get("carol").is_some())
        .await;

    let diff = observer
        .recv_until(|f| f[3] == "presence_diff" && f[4]["joins"].get("carol").is_some())
        .await;
    assert_eq!(
        diff[4]["joins"]["carol"]["metas"][0]["node"], "b",
        "the member is tracked where its session lives"
    );

    // A heartbeat and a leave, whichever node they reach, reach the session on b.
    carol
        .send(json!([null, "2", "phoenix", "heartbeat", {}]))
        .await;
    let beat = carol.recv_until(|f| f[1] == "2").await;
    assert_eq!(beat[4]["status"], "ok");
    carol
        .send(json!(["1", "3", "room:lobby", "phx_leave", {}]))
        .await;
    observer
        .recv_until(|f| f[3] == "presence_diff" && f[4]["leaves"].get("carol").is_some())
        .await;
}

#[tokio::test]
async fn a_relayed_poll_with_nothing_to_say_answers_204_after_the_window() {
    let (a, b) = pair(Duration::from_millis(300)).await;
    let token = open(&b, "dave").await;
    let answer = get(&a, &format!("vsn=2.0.0&token={token}")).await;
    assert_eq!(answer["status"], 204, "{answer}");
    assert_eq!(answer["token"], token.as_str());
}

#[tokio::test]
async fn a_token_of_a_node_not_in_the_cluster_opens_a_new_session_here() {
    let (a, _b) = pair(Duration::from_millis(300)).await;
    let ghost = format!("{:032x}.{}", 7u128, URL_SAFE_NO_PAD.encode("ghost"));
    let answer = get(&a, &format!("vsn=2.0.0&user_id=erin&token={ghost}")).await;
    assert_eq!(answer["status"], 410);
    let fresh = answer["token"].as_str().expect("a new token");
    assert_ne!(fresh, ghost);
    // The new session is usable at once.
    let join = json!(["1", "1", "room:lobby", "phx_join", {}]);
    assert_eq!(post(&a, fresh, &[join]).await["status"], 200);
    // A POST for the unknown node's session is refused, as for any missing session.
    assert_eq!(post(&a, &ghost, &[]).await["status"], 410);
}

#[tokio::test]
async fn a_session_the_owner_no_longer_has_is_replaced_on_the_next_poll() {
    let (a, b) = pair(Duration::from_millis(300)).await;
    // A token naming node b, for a session b never had (or already closed).
    let stale = format!("{:032x}.{}", 9u128, URL_SAFE_NO_PAD.encode("b"));
    let answer = get(&a, &format!("vsn=2.0.0&user_id=frank&token={stale}")).await;
    assert_eq!(answer["status"], 410);
    assert_ne!(
        answer["token"],
        stale.as_str(),
        "a new session, opened on a"
    );
    assert_eq!(post(&b, &stale, &[]).await["status"], 410);
}
