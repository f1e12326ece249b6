//! Benchmark: how long after a client sends `phx_join` does another member of the room see its
//! `presence_diff`? One in-process node on 127.0.0.1, real WebSockets, 1,000 joins (each joiner
//! connects first, so connect time is not counted, and leaves before the next join).
//!
//! `cargo run --release -p rollcall-server --example join_latency [-- JOINS]`

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rollcall_server::{Config, Server};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr, user: &str) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id={user}");
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

/// Reads frames until a presence_diff whose `side` (joins/leaves) holds `key`.
async fn wait_diff(ws: &mut Ws, side: &str, key: &str) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("diff within 5 s")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v[3] == "presence_diff" && v[4][side].get(key).is_some() {
                return;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let joins: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::new(Config::default());
    tokio::spawn(server.serve(listener, std::future::pending()));

    let mut observer = connect(addr, "observer").await;
    observer
        .send(Message::text(
            r#"["1","1","room:bench","phx_join",{"track":false}]"#,
        ))
        .await
        .expect("join");
    let mut samples = Vec::with_capacity(joins);
    for i in 0..joins {
        let key = format!("u{i}");
        let mut joiner = connect(addr, &key).await;
        let join = Message::text(r#"["1","1","room:bench","phx_join",{"meta":{"status":"here"}}]"#);
        let t0 = Instant::now();
        joiner.send(join).await.expect("join");
        wait_diff(&mut observer, "joins", &key).await;
        samples.push(t0.elapsed());
        drop(joiner);
        wait_diff(&mut observer, "leaves", &key).await;
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "join -> presence_diff seen by another client, {} joins: p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms, max {:.3} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}
