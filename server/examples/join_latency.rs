//! Benchmark: how long after a client sends `phx_join` does another member of the room see its
//! `presence_diff`? One in-process node on 127.0.0.1, real WebSockets, 1,000 joins (each joiner
//! connects first, so connect time is not counted, and leaves before the next join).
//!
//! `cargo run --release -p rollcall-server --example join_latency [-- JOINS]`

mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use rollcall_server::{Config, Server};
use support::{connect, ms, wait_diff, Summary};
use tokio_tungstenite::tungstenite::Message;

const WITHIN: Duration = Duration::from_secs(5);

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
        wait_diff(&mut observer, "joins", &key, WITHIN).await;
        samples.push(t0.elapsed());
        drop(joiner);
        wait_diff(&mut observer, "leaves", &key, WITHIN).await;
    }
    let n = samples.len();
    let s = Summary::of(&mut samples);
    println!(
        "join -> presence_diff seen by another client, {n} joins: p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms, max {:.3} ms",
        ms(s.p50),
        ms(s.p99),
        ms(s.mean),
        ms(s.max),
    );
}
