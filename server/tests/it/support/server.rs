//! Test support: a real server on 127.0.0.1:0 and a small WebSocket client that speaks raw
//! Phoenix frames. Every wait has a deadline; nothing sleeps and hopes.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rollcall_server::{Config, Presence, Server, ShutdownHandle, Tracker};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// How long a condition awaited over several events (a member leaving after a timeout, a
/// session expiring) may take before the test fails.
pub const CONDITION_DEADLINE: Duration = Duration::from_secs(20);

/// Runs `wait` (a loop until some condition holds) and fails the test, naming `what`, if it
/// has not finished within [`CONDITION_DEADLINE`].
pub async fn within<T>(what: &str, wait: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CONDITION_DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out after {CONDITION_DEADLINE:?} waiting for {what}"))
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub tracker: Tracker,
    pub presence: Presence,
    pub shutdown: ShutdownHandle,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn start(config: Config) -> TestServer {
    serve(Server::new(config)).await
}

/// Serves an already built server (e.g. with channel handlers) on 127.0.0.1:0.
pub async fn serve(server: Server) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tracker = server.tracker().clone();
    let presence = server.presence().clone();
    let shutdown = server.shutdown_handle();
    let done = tokio::spawn(server.serve(listener, std::future::pending()));
    TestServer {
        addr,
        tracker,
        presence,
        shutdown,
        done,
    }
}

pub async fn start_default() -> TestServer {
    start(Config::default()).await
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
}

impl Client {
    pub async fn connect(server: &TestServer, query: &str) -> Client {
        Client::connect_to(&server.addr.to_string(), query).await
    }

    /// Connects to the node at `addr` (`HOST:PORT`, e.g. a `rollcall` process).
    pub async fn connect_to(addr: &str, query: &str) -> Client {
        let url = format!("ws://{addr}/socket/websocket?{query}");
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connected before the deadline")
            .expect("the WebSocket connects");
        Client { ws, next_ref: 0 }
    }

    /// Connects from the loopback address `from` (any of 127.0.0.0/8 is this machine), so that
    /// per-address limits see another client than 127.0.0.1.
    pub async fn connect_from(
        server: &TestServer,
        from: &str,
        query: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let tcp = tcp_from(from, server.addr).await;
        let url = format!("ws://{}/socket/websocket?{query}", server.addr);
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await?;
        Ok(Client { ws, next_ref: 0 })
    }

    /// Wraps an already-connected socket.
    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client { ws, next_ref: 0 }
    }

    /// A V2 client with `user_id`.
    pub async fn user(server: &TestServer, user_id: &str) -> Client {
        Client::user_at(server.addr, user_id).await
    }

    /// A V2 client with `user_id` of the server at `addr`.
    pub async fn user_at(addr: SocketAddr, user_id: &str) -> Client {
        let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id={user_id}");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client { ws, next_ref: 0 }
    }

    pub fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// The next data frame, within the deadline.
    pub async fn recv(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("no frame before the deadline")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next frame as JSON (fails on binary or close).
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Skips frames until one matches `pred` (within the deadline for each frame).
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv_json().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// Joins `topic` with `payload` (V2); returns the join_ref after checking the ok reply.
    pub async fn join(&mut self, topic: &str, payload: Value) -> String {
        let r = self.next_ref();
        self.send_json(json!([r, r, topic, "phx_join", payload]))
            .await;
        // Frames of other channels may come first; the reply is the frame with our ref.
        let reply = self.recv_until(|v| v[1] == json!(r)).await;
        assert_eq!(
            reply,
            json!([r, r, topic, "phx_reply", {"status": "ok", "response": {}}])
        );
        r
    }

    /// Pushes an event with `join_ref`; returns the ref.
    pub async fn push(
        &mut self,
        join_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let r = self.next_ref();
        self.send_json(json!([join_ref, r, topic, event, payload]))
            .await;
        r
    }

    /// Waits for the close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("no close before the deadline");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error before close: {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    }

    /// Sends a heartbeat and returns only after its reply arrived: every frame the server
    /// queued before the heartbeat was answered is returned, in order.
    pub async fn sync(&mut self) -> Vec<Value> {
        let r = self.next_ref();
        self.send_json(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        let mut before = Vec::new();
        loop {
            let v = self.recv_json().await;
            if v[1] == json!(r) && v[2] == json!("phoenix") {
                return before;
            }
            before.push(v);
        }
    }
}

/// A TCP connection to `addr` from the loopback address `from`.
pub async fn tcp_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// The keys of a presence map (`presence_state` or one side of a diff).
pub fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// A plain HTTP/1.1 request over a fresh connection; returns (status, headers, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("no HTTP response before the deadline")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A long-poll GET: the answer's JSON, after checking the headers every answer carries.
pub async fn longpoll_get(addr: SocketAddr, query: &str) -> Value {
    let (status, headers, body) =
        http(addr, "GET", &format!("/socket/longpoll?{query}"), &[], b"").await;
    assert_eq!(status, 200, "long-poll always answers HTTP 200");
    assert!(headers
        .iter()
        .any(|(k, v)| k == "access-control-allow-origin" && v == "*"));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "cache-control" && v == "no-store"));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
    serde_json::from_str(&body).unwrap()
}

/// A long-poll POST of `body` to the session of `token`: the answer's JSON.
pub async fn longpoll_post(
    addr: SocketAddr,
    token: &str,
    content_type: &str,
    body: impl AsRef<[u8]>,
) -> Value {
    let (status, _, body) = http(
        addr,
        "POST",
        "/socket/longpoll?vsn=2.0.0",
        &[
            ("content-type", content_type),
            ("x-phoenix-longpoll-token", token),
        ],
        body.as_ref(),
    )
    .await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// Opens a session; returns its token.
pub async fn longpoll_open(addr: SocketAddr, query: &str) -> String {
    let resp = longpoll_get(addr, query).await;
    assert_eq!(resp["status"], 410);
    assert_eq!(resp["messages"], json!([]));
    resp["token"].as_str().unwrap().to_string()
}
