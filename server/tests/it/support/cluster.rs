//! Test support for cluster tests: real `rollcall` processes on 127.0.0.1 and a Phoenix client
//! that keeps its own presence list (applying `presence_state` and `presence_diff` as phoenix.js
//! does), so tests wait on what a user would see. Every wait has a deadline.

pub use super::broker::{Broker, BrokerKind};

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_rollcall");

/// The longest any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Cluster tests start several processes; running them one at a time keeps a 2-core machine
/// from starving heartbeats (which would make nodes flap down and up).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Short tracker timing so failures are detected in about a second.
pub const FAST_TIMING: [&str; 6] = [
    "--broadcast-period-ms",
    "100",
    "--down-period-ms",
    "1000",
    "--permdown-period-ms",
    "3000",
];

/// One `rollcall serve` process.
pub struct Node {
    pub name: String,
    /// HTTP address (`127.0.0.1:PORT`).
    pub addr: String,
    /// Mesh address, when the node runs the mesh.
    pub cluster_addr: Option<String>,
    /// Every line the node wrote to stdout (its log) so far.
    output: Arc<Mutex<Vec<String>>>,
    child: Child,
}

impl Node {
    /// Starts `rollcall serve --port 0 --node NAME` plus `args`; waits for its listening lines.
    pub async fn start(name: &str, args: &[String]) -> Node {
        let mut command = Node::command();
        command
            .args(["--port", "0", "--node", name, "--fault-injection"])
            .args(args)
            .env("RUST_LOG", "info");
        let mesh = args.iter().any(|a| a == "mesh");
        Node::spawn(name, command, mesh).await
    }

    /// `rollcall serve` with none of the `ROLLCALL_*` variables of the environment the tests
    /// run in (a developer's shell may set some), for [`Node::spawn`].
    pub fn command() -> Command {
        let mut command = Command::new(BIN);
        command.arg("serve");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ROLLCALL_") {
                command.env_remove(key);
            }
        }
        command
    }

    /// Runs `command` (a [`Node::command`] with its flags and environment) as the node `name`;
    /// waits for its listening line, and for its mesh listening line too when `mesh` is set.
    /// Its stderr (the log) goes to a file in the temporary directory, named in every failure.
    pub async fn spawn(name: &str, mut command: Command, mesh: bool) -> Node {
        let log =
            std::env::temp_dir().join(format!("rollcall-test-{name}-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&log)
            .map(Stdio::from)
            .unwrap_or(Stdio::null());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("rollcall starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut cluster_addr) = (None, None);
        tokio::time::timeout(DEADLINE, async {
            while addr.is_none() || (mesh && cluster_addr.is_none()) {
                let line = lines
                    .next_line()
                    .await
                    .expect("stdout readable")
                    .unwrap_or_else(|| panic!("{name} exited at start; see {}", log.display()));
                if let Some(a) = line.strip_prefix("rollcall listening on http://") {
                    addr = Some(a.to_string());
                } else if let Some(a) = line.strip_prefix("rollcall cluster listening on ") {
                    cluster_addr = Some(a.to_string());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} did not print its addresses; see {}", log.display()));
        // Keep draining stdout (the log) so the process never blocks on a full pipe.
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let keep = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Node {
            name: name.to_string(),
            addr: addr.unwrap_or_default(),
            cluster_addr,
            output,
            child,
        }
    }

    /// The lines the node has logged so far (after its listening lines).
    pub fn log_lines(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The value of the `/metrics` sample `sample` (name and labels as written), or 0.
    pub async fn metric(&self, sample: &str) -> u64 {
        let (status, body) = http(&self.addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Starts a mesh node seeded with `peers`.
    pub async fn mesh(name: &str, peers: &[&Node], timing: &[&str]) -> Node {
        let mut args: Vec<String> = [
            "--cluster",
            "mesh",
            "--cluster-listen",
            "127.0.0.1:0",
            "--cluster-secret",
            super::broker::SECRET,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let seeds: Vec<String> = peers
            .iter()
            .filter_map(|p| p.cluster_addr.clone())
            .collect();
        if !seeds.is_empty() {
            args.push("--peers".into());
            args.push(seeds.join(","));
        }
        args.extend(timing.iter().map(|s| s.to_string()));
        Node::start(name, &args).await
    }

    fn pid(&self) -> String {
        self.child.id().map(|p| p.to_string()).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {}", self.pid());
    }

    /// `kill -9`, then reaps the process.
    pub async fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM (the process then shuts down gracefully).
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub async fn wait_exit(&mut self) -> bool {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the node exits before the deadline")
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Cuts this node off from `peer` (or heals), through the test-only fault switch.
    pub async fn partition(&self, peer: &str, partitioned: bool) {
        let (status, _) = http(
            &self.addr,
            "POST",
            &format!("/_fault/partition?peer={peer}&partitioned={partitioned}"),
        )
        .await;
        assert_eq!(status, 200);
    }

    /// Waits until `/healthz` shows every peer in `peers` up.
    pub async fn wait_peers_up(&self, peers: &[&str]) {
        wait_peers_up(&self.name, &self.addr, peers).await;
    }

    /// Waits until the tracker replica of every peer in `peers` is up.
    pub async fn wait_replicas_up(&self, peers: &[&str]) {
        wait_replicas_up(&self.name, &self.addr, peers).await;
    }

    /// `GET /healthz` as JSON.
    pub async fn healthz(&self) -> Value {
        healthz(&self.addr).await
    }
}

/// `GET /healthz` of the node at `addr`, as JSON.
pub async fn healthz(addr: &str) -> Value {
    let (status, body) = http(addr, "GET", "/healthz").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("healthz is JSON")
}

/// Waits until `/healthz` of node `name` (at `addr`) shows the transport to every peer in
/// `peers` up.
pub async fn wait_peers_up(name: &str, addr: &str, peers: &[&str]) {
    wait_health(name, addr, peers, "transport").await;
}

/// Waits until `/healthz` of node `name` (at `addr`) shows the tracker replica of every peer
/// in `peers` up (they have exchanged heartbeats, so changes replicate from now on).
pub async fn wait_replicas_up(name: &str, addr: &str, peers: &[&str]) {
    wait_health(name, addr, peers, "replica").await;
}

async fn wait_health(name: &str, addr: &str, peers: &[&str], field: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let health = healthz(addr).await;
        let up = |peer: &str| {
            health["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == json!(peer) && p[field] == json!("up"))
        };
        if peers.iter().all(|p| up(p)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: peers {peers:?} not up: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.1 request; returns (status, body).
pub async fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("node reachable");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("request sent");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("HTTP response before the deadline")
        .expect("response readable");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// What one client has seen.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Presence as phoenix.js keeps it: key → metas (each with `phx_ref`).
    pub presence: BTreeMap<String, Vec<Value>>,
    /// Every key that ever joined after having left (per key, how many times it re-joined).
    pub rejoins: BTreeMap<String, usize>,
    /// Keys seen leaving at some point.
    pub left: BTreeSet<String>,
    /// Relayed events: (event, payload).
    pub events: Vec<(String, Value)>,
    /// Every `phx_reply` frame, whole.
    pub replies: Vec<Value>,
    /// The close code, once the server closed the socket.
    pub closed: Option<u16>,
}

impl View {
    /// The keys currently present.
    pub fn keys(&self) -> BTreeSet<String> {
        self.presence.keys().cloned().collect()
    }

    /// `(key, phx_ref)` of every meta, for comparing views across nodes.
    pub fn refs(&self) -> BTreeSet<(String, String)> {
        self.presence
            .iter()
            .flat_map(|(k, metas)| {
                metas
                    .iter()
                    .map(move |m| (k.clone(), m["phx_ref"].as_str().unwrap_or("").to_string()))
            })
            .collect()
    }

    fn apply_state(&mut self, state: &Value) {
        self.presence.clear();
        if let Some(obj) = state.as_object() {
            for (k, v) in obj {
                let metas = v["metas"].as_array().cloned().unwrap_or_default();
                self.presence.insert(k.clone(), metas);
            }
        }
    }

    fn apply_diff(&mut self, diff: &Value) {
        if let Some(joins) = diff["joins"].as_object() {
            for (k, v) in joins {
                if self.left.contains(k) && !self.presence.contains_key(k) {
                    *self.rejoins.entry(k.clone()).or_default() += 1;
                }
                let metas = self.presence.entry(k.clone()).or_default();
                for m in v["metas"].as_array().cloned().unwrap_or_default() {
                    if !metas.iter().any(|x| x["phx_ref"] == m["phx_ref"]) {
                        metas.push(m);
                    }
                }
            }
        }
        if let Some(leaves) = diff["leaves"].as_object() {
            for (k, v) in leaves {
                let gone: Vec<Value> = v["metas"]
                    .as_array()
                    .map(|a| a.iter().map(|m| m["phx_ref"].clone()).collect())
                    .unwrap_or_default();
                if let Some(metas) = self.presence.get_mut(k) {
                    metas.retain(|m| !gone.contains(&m["phx_ref"]));
                    if metas.is_empty() {
                        self.presence.remove(k);
                        self.left.insert(k.clone());
                    }
                }
            }
        }
    }
}

/// A V2 WebSocket client joined to one room; a background task applies what arrives to its
/// [`View`].
pub struct User {
    pub key: String,
    pub topic: String,
    view: Arc<(Mutex<View>, Notify)>,
    out: mpsc::UnboundedSender<Message>,
    join_ref: String,
    next_ref: u64,
}

impl User {
    /// Connects to `node` as `key` and joins `topic` with `meta`; returns once the join is
    /// answered and the initial `presence_state` applied.
    pub async fn join(node: &Node, key: &str, topic: &str, meta: Value) -> User {
        let user = User::connect(node, key, topic, json!({"meta": meta})).await;
        user.wait_for("own join", |v| v.presence.contains_key(key))
            .await;
        user
    }

    /// Connects to `node` as `key` and joins `topic` as an observer (`track: false`): it
    /// receives presence but is not listed.
    pub async fn observe(node: &Node, key: &str, topic: &str) -> User {
        User::connect(node, key, topic, json!({"track": false})).await
    }

    async fn connect(node: &Node, key: &str, topic: &str, payload: Value) -> User {
        let user = User::open(node, key, topic).await;
        user.send_join(payload);
        user
    }

    /// Sends the `phx_join` of the user's topic with `payload` (without waiting for anything).
    pub fn send_join(&self, payload: Value) {
        self.send(json!(["1", "1", self.topic, "phx_join", payload]));
    }

    /// Connects to `node` as `key` for `topic` without joining yet (see [`User::send_join`]).
    pub async fn open(node: &Node, key: &str, topic: &str) -> User {
        User::open_at(&node.addr, key, topic).await
    }

    /// Connects to the node at `addr` as `key` for `topic` without joining yet.
    pub async fn open_at(addr: &str, key: &str, topic: &str) -> User {
        let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id={key}");
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect before the deadline")
            .expect("websocket connects");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let view: Arc<(Mutex<View>, Notify)> = Arc::default();
        let reader = view.clone();
        let heartbeat_out = out.clone();
        // Heartbeats keep the connection inside the idle timeout during long tests.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let hb = json!([null, "hb", "phoenix", "heartbeat", {}]).to_string();
                if heartbeat_out.send(Message::text(hb)).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let Ok(msg) = msg else { break };
                let mut view = reader.0.lock().unwrap_or_else(|e| e.into_inner());
                match msg {
                    Message::Text(t) => {
                        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                            continue;
                        };
                        match v[3].as_str().unwrap_or("") {
                            "presence_state" => view.apply_state(&v[4]),
                            "presence_diff" => view.apply_diff(&v[4]),
                            "phx_reply" => view.replies.push(v.clone()),
                            "phx_close" | "phx_error" => {}
                            event => view.events.push((event.to_string(), v[4].clone())),
                        }
                    }
                    Message::Close(frame) => {
                        view.closed = Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                    }
                    _ => {}
                }
                drop(view);
                reader.1.notify_waiters();
            }
            let mut view = reader.0.lock().unwrap_or_else(|e| e.into_inner());
            view.closed.get_or_insert(1006);
            drop(view);
            reader.1.notify_waiters();
        });
        User {
            key: key.to_string(),
            topic: topic.to_string(),
            view,
            out,
            join_ref: "1".into(),
            next_ref: 1,
        }
    }

    fn send(&self, frame: Value) {
        let _ = self.out.send(Message::text(frame.to_string()));
    }

    /// Pushes `event` with `payload` on the room.
    pub fn push(&mut self, event: &str, payload: Value) {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        self.send(json!([self.join_ref, r, self.topic, event, payload]));
    }

    /// Leaves the room (`phx_leave`); the connection stays open.
    pub fn leave(&mut self) {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        self.send(json!([self.join_ref, r, self.topic, "phx_leave", {}]));
    }

    /// Closes the connection (a close frame), as a page unload does.
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }

    /// A copy of what this user has seen.
    pub fn view(&self) -> View {
        self.view
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `pred` holds for the view; fails the test after [`DEADLINE`] with `what`
    /// and the last view.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&View) -> bool) -> View {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.view.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let view = self.view();
            if pred(&view) {
                return view;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{}: timed out waiting for {what}; last view: {:#?}",
                    self.key,
                    self.view()
                );
            }
        }
    }

    /// Waits until exactly `keys` are present.
    pub async fn wait_keys(&self, keys: &[&str]) -> View {
        let want: BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
        self.wait_for(&format!("members {keys:?}"), |v| v.keys() == want)
            .await
    }
}

/// A rollcall node inside the test process (the library, as an app embeds it), meshed with
/// real `rollcall` processes: the test drives its Rust API while clients use the processes.
pub struct Embedded {
    pub name: String,
    /// HTTP address (`127.0.0.1:PORT`).
    pub addr: String,
    pub presence: rollcall_server::Presence,
    pub shutdown: rollcall_server::ShutdownHandle,
}

impl Embedded {
    /// Starts node `name` with the processes' [`FAST_TIMING`], dialing `peers`; `build` adds
    /// what the test needs (channel handlers, hooks) to the builder.
    pub async fn start(
        name: &str,
        peers: &[&Node],
        build: impl FnOnce(rollcall_server::ServerBuilder) -> rollcall_server::ServerBuilder,
    ) -> Embedded {
        use rollcall_server::config::ClusterSettings;
        use rollcall_server::pubsub::{connect, ClusterConfig, MeshConfig};
        let seeds = peers
            .iter()
            .filter_map(|p| p.cluster_addr.clone())
            .collect();
        // Through `connect`, as the binary does: the same framing of messages on the wire.
        let mesh = MeshConfig::new("127.0.0.1:0", seeds, super::broker::SECRET);
        let mesh = connect(name, ClusterConfig::Mesh(mesh))
            .await
            .expect("mesh starts");
        let config = rollcall_server::Config {
            static_dir: None,
            cluster: ClusterSettings {
                broadcast_period: Duration::from_millis(100),
                down_period: Duration::from_millis(1000),
                permdown_period: Duration::from_millis(3000),
                ..ClusterSettings::default()
            },
            ..rollcall_server::Config::default()
        };
        let server = build(rollcall_server::Server::builder(config).pubsub(mesh)).build();
        let presence = server.presence().clone();
        let shutdown = server.shutdown_handle();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        tokio::spawn(server.serve(listener, std::future::pending()));
        Embedded {
            name: name.to_string(),
            addr,
            presence,
            shutdown,
        }
    }
}

impl Embedded {
    /// Waits until the tracker replica of every peer in `peers` is up.
    pub async fn wait_replicas_up(&self, peers: &[&str]) {
        wait_replicas_up(&self.name, &self.addr, peers).await;
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}
