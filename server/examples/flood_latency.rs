//! Benchmark: does one connection flooding events slow down everyone else? Measures how long
//! after a client sends `phx_join` another member of the room sees its `presence_diff`, first
//! on a quiet node, then while a flooder sends events as fast as its socket takes them (and
//! reconnects whenever the server closes it for abuse). One in-process node on 127.0.0.1, real
//! WebSockets. Runs twice: with the default rate limits, and with rate limits off.
//!
//! `cargo run --release -p rollcall-server --example flood_latency [-- JOINS [same-room]]`
//!
//! By default the flooder is in another room (`room:flood`); with `same-room` it floods the
//! measured room, so the observer also receives what the limits let through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rollcall_server::config::{RateLimit, Security};
use rollcall_server::{Config, Server};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, user: &str) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id={user}");
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

/// Reads frames until a presence_diff whose `side` (joins/leaves) holds `key`.
async fn wait_diff(ws: &mut Ws, side: &str, key: &str) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("diff within 10 s")
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

struct Latency {
    p50: Duration,
    p99: Duration,
}

/// `joins` timed joins of fresh connections, each seen by `observer`.
async fn measure(addr: SocketAddr, observer: &mut Ws, joins: usize, tag: &str) -> Latency {
    let mut samples = Vec::with_capacity(joins);
    for i in 0..joins {
        let key = format!("{tag}{i}");
        let mut joiner = connect(addr, &key).await;
        let join = Message::text(r#"["1","1","room:bench","phx_join",{"meta":{"s":"here"}}]"#);
        let t0 = Instant::now();
        joiner.send(join).await.expect("join");
        wait_diff(observer, "joins", &key).await;
        samples.push(t0.elapsed());
        drop(joiner);
        wait_diff(observer, "leaves", &key).await;
    }
    samples.sort();
    Latency {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
    }
}

#[derive(Default)]
struct FloodStats {
    sent: AtomicU64,
    received: AtomicU64,
    connections: AtomicU64,
}

/// Floods `topic` with events until `stop`; reconnects whenever the server closes it.
async fn flood(addr: SocketAddr, topic: String, stop: Arc<AtomicBool>, stats: Arc<FloodStats>) {
    let push = format!(r#"["1","2","{topic}","cursor",{{"x":1,"y":2}}]"#);
    let join = format!(r#"["1","1","{topic}","phx_join",{{}}]"#);
    while !stop.load(Ordering::Relaxed) {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let ws = connect(addr, "flooder").await;
        let (mut tx, mut rx) = ws.split();
        let received = stats.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(_)) = rx.next().await {
                received.received.fetch_add(1, Ordering::Relaxed);
            }
        });
        if tx.send(Message::text(join.clone())).await.is_err() {
            continue;
        }
        while !stop.load(Ordering::Relaxed) && !reader.is_finished() {
            if tx.send(Message::text(push.clone())).await.is_err() {
                break;
            }
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        reader.abort();
    }
}

async fn run(joins: usize, same_room: bool, limits: bool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let security = if limits {
        Security::default()
    } else {
        let off = RateLimit {
            per_second: 0.0,
            burst: 0,
        };
        Security {
            event_rate: off,
            meta_rate: off,
            ..Security::default()
        }
    };
    let server = Server::new(Config {
        security,
        max_queued_frames: 1 << 20,
        ..Config::default()
    });
    tokio::spawn(server.serve(listener, std::future::pending()));

    let mut observer = connect(addr, "observer").await;
    observer
        .send(Message::text(
            r#"["1","1","room:bench","phx_join",{"track":false}]"#,
        ))
        .await
        .expect("join");
    // Warm up, then the quiet baseline.
    measure(addr, &mut observer, joins / 10 + 1, "w").await;
    let quiet = measure(addr, &mut observer, joins, "q").await;

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let topic = if same_room {
        "room:bench"
    } else {
        "room:flood"
    };
    let flooder = tokio::spawn(flood(addr, topic.into(), stop.clone(), stats.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let flooded = measure(addr, &mut observer, joins, "f").await;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), flooder).await;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "limits {:<3} flooder in {:<10} | quiet p50 {:.3} ms p99 {:.3} ms | flooded p50 {:.3} ms p99 {:.3} ms | ratio p50 {:.2}x p99 {:.2}x | flood {:.0} msgs/s sent, {:.0} frames/s back, {} connection(s)",
        if limits { "on" } else { "off" },
        topic,
        ms(quiet.p50),
        ms(quiet.p99),
        ms(flooded.p50),
        ms(flooded.p99),
        ms(flooded.p50) / ms(quiet.p50),
        ms(flooded.p99) / ms(quiet.p99),
        stats.sent.load(Ordering::Relaxed) as f64 / secs,
        stats.received.load(Ordering::Relaxed) as f64 / secs,
        stats.connections.load(Ordering::Relaxed),
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let joins: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(300);
    let same_room = args.next().is_some_and(|a| a == "same-room");
    run(joins, same_room, true).await;
    run(joins, same_room, false).await;
}
